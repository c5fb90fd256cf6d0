"""Absolute addresses of the dashboard's pages, for links in API answers, mails and hooks.

The dashboard serves these paths; everything that points a person at a page builds its address
here, so a change of layout is made once.
"""

from __future__ import annotations

from django.conf import settings


def absolute(path: str) -> str:
    """``path`` (starting with "/") under the address Slipway is reached at."""
    return settings.BASE_URL + path


def index_page() -> str:
    return absolute("/")


def project_page(slug: str) -> str:
    return absolute(f"/projects/{slug}/")


def server_page(slug: str, server_id: int) -> str:
    return absolute(f"/projects/{slug}/servers/{server_id}/")


def deployment_page(slug: str, deployment_id: int) -> str:
    return absolute(f"/projects/{slug}/deployments/{deployment_id}/")
