"""Status badges: an SVG per project and per server for a README or a wall screen.

The badge says how the last deployment went and which revision it was about: for a project,
its newest deployment or rollback (previews left out); for a server, the newest one that
reached it and the revision live there. The look is shields.io's flat style, drawn by
anybadge (https://github.com/jongracecox/anybadge), which escapes the text it is given.

Anyone with a badge URL sees what a badge shows, and nothing else: the state word, the
server's name and seven characters of a commit. The URL holds the project's badge token
(``Project.badge_token``), which an admin rotates (projects.services.project_badge_rotate).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import anybadge

from builds.models import Deployment, DeploymentTarget, Kind, Status, TargetStatus
from projects.models import Project
from servers.models import Server

#: shields.io's named colours (https://shields.io/badges: brightgreen, red, blue, lightgrey).
GREEN = "#4c1"
RED = "#e05d44"
BLUE = "#007ec6"
GREY = "#9f9f9f"
YELLOW = "#dfb317"

_COLOURS: dict[str, str] = {
    Status.SUCCEEDED: GREEN,
    Status.FAILED: RED,
    Status.RUNNING: BLUE,
    Status.QUEUED: BLUE,
    Status.CANCELLED: GREY,
    TargetStatus.WAITING: BLUE,
    TargetStatus.SKIPPED: GREY,
    TargetStatus.ROLLED_BACK: RED,
}
_WORDS: dict[str, str] = {TargetStatus.ROLLED_BACK: "rolled back", TargetStatus.WAITING: "waiting"}
SHORT_REVISION = 7


@dataclass(frozen=True)
class Badge:
    """What a badge shows: ``label`` on the left, ``message`` on a ``colour`` on the right."""

    label: str
    message: str
    colour: str

    def svg(self) -> str:
        """The badge as an SVG document (UTF-8 text, 20 px high); the same badge gives the
        same text (an ETag)."""
        badge = anybadge.Badge(
            label=_text(self.label), value=_text(self.message), default_color=self.colour
        )
        # anybadge numbers its masks across a process (for several badges in one page);
        # ours are documents of their own, so one name is unique enough and stays stable.
        badge.mask_str = "slipway-badge"
        return str(badge)


_SHA = re.compile(r"[0-9a-f]{40}")
# XML 1.0 allows no C0 control character but tab, newline and carriage return, and no DEL.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _short(deployment: Deployment) -> str:
    """Seven characters of the commit the deployment resolved; "" before it resolved one (a
    branch or tag name it was asked for is not shown)."""
    for candidate in (deployment.end_revision, deployment.revision):
        if _SHA.fullmatch(candidate or ""):
            return candidate[:SHORT_REVISION]
    return ""


def _text(value: str) -> str:
    """``value`` without the control characters an SVG (XML 1.0) cannot hold."""
    return _CONTROL.sub("", value)


def project_badge(project: Project) -> Badge:
    """The project's badge: "deploy | succeeded 1a2b3c4", "deploy | never deployed"..."""
    latest = (
        Deployment.objects.filter(project=project)
        .exclude(kind=Kind.PREVIEW)
        .order_by("-created_at", "-id")
        .first()
    )
    if latest is None:
        return Badge("deploy", "never deployed", GREY)
    colour = _COLOURS.get(latest.status, GREY)
    word = str(latest.status)
    if latest.kind == Kind.ROLLBACK:
        # A rollback that worked is not a deployment that worked: yellow, as shields.io's
        # warnings.
        word = "rolled back" if latest.status == Status.SUCCEEDED else f"rollback {word}"
        colour = YELLOW if latest.status == Status.SUCCEEDED else colour
    elif latest.kind == Kind.SWITCH:
        word = "switched back" if latest.status == Status.SUCCEEDED else f"switch back {word}"
        colour = YELLOW if latest.status == Status.SUCCEEDED else colour
    message = f"{word} {_short(latest)}".strip()
    return Badge("deploy", message, colour)


def server_badge(server: Server) -> Badge:
    """A server's badge: its name, how the newest deployment that reached it went, and the
    revision live on it ("app1 | succeeded, live 1a2b3c4")."""
    target = (
        DeploymentTarget.objects.filter(server=server)
        .exclude(deployment__kind=Kind.PREVIEW)
        .select_related("deployment")
        .order_by("-deployment__created_at", "-deployment__id")
        .first()
    )
    if target is None:
        return Badge(server.name, "never deployed", GREY)
    live = server.live_release()
    state = _WORDS.get(target.status, target.status)
    message = f"{state}, live {live.revision[:SHORT_REVISION]}" if live else state
    return Badge(server.name, message, _COLOURS.get(target.status, GREY))
