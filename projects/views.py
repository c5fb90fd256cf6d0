"""Dashboard pages for projects."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from projects.models import Membership, Project


def _user_id(request: HttpRequest) -> int:
    return int(request.user.pk or 0)


def _get_project_for_user(request: HttpRequest, slug: str) -> tuple[Project, Membership]:
    """The project, reached only through the caller's membership: 404 for anyone else."""
    membership = (
        Membership.objects.select_related("project")
        .filter(project__slug=slug, user_id=_user_id(request))
        .first()
    )
    if membership is None:
        raise Http404("No such project")
    return membership.project, membership


@login_required
def index(request: HttpRequest) -> HttpResponse:
    projects = Project.objects.filter(memberships__user_id=_user_id(request)).prefetch_related(
        "servers"
    )
    return render(request, "projects/index.html", {"projects": projects})


@login_required
def project_detail(request: HttpRequest, slug: str) -> HttpResponse:
    project, membership = _get_project_for_user(request, slug)
    deployments = project.deployments.all()[:20]
    return render(
        request,
        "projects/detail.html",
        {"project": project, "membership": membership, "deployments": deployments},
    )
