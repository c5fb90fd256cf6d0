"""Shared parts of the JSON API: access helpers, the error format, links and pagination.

Every object is reached through the caller's membership of its project: ids of another
project's objects answer 404, exactly like ids that do not exist. The role then decides
what a member may do (``Need``): a viewer reads, a deployer also deploys, an admin also
configures. A request made with an API token is further narrowed by the token's scope
(``TokenScope``): read allows VIEW, deploy VIEW and DEPLOY, admin all the role allows. The
membership is read afresh on every request, so a removed member or a lowered role counts at
once for every token.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from typing import Any, TypeVar

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from django.urls import reverse
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, status
from rest_framework.decorators import api_view
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param
from rest_framework.views import exception_handler as drf_exception_handler

from builds.engine.errors import InvalidInput
from builds.models import Deployment
from builds.services import (
    ApprovalRefused,
    DeploymentFinished,
    DeploymentFrozen,
    DeploymentGated,
    DeploymentLocked,
    DeploymentRefused,
    DeploymentWrongState,
    DeployRightsForbidden,
    FreezeOverrideForbidden,
    GateOverrideForbidden,
    LockStateError,
)
from deployer.db import RETRY_AFTER_SECONDS, UNAVAILABLE_ERRORS, UNAVAILABLE_MESSAGE
from deployer.links import absolute
from projects import access
from projects.access import ModelT
from projects.models import CONFIGURE_ROLES, DEPLOY_ROLES, ApiToken, Membership, Role, TokenScope
from servers.models import Release, Server
from servers.services import LockBreakRefused

logger = logging.getLogger(__name__)

FoundT = TypeVar("FoundT")


class Need(enum.Enum):
    """What the caller is about to do with a project's object."""

    VIEW = "view"
    DEPLOY = "deploy"
    CONFIGURE = "configure"


_ROLES: dict[Need, tuple[str, ...]] = {
    Need.VIEW: tuple(Role.values),
    Need.DEPLOY: tuple(DEPLOY_ROLES),
    Need.CONFIGURE: tuple(CONFIGURE_ROLES),
}
_DOING: dict[Need, str] = {
    Need.VIEW: "see it",
    Need.DEPLOY: "deploy, roll back or cancel",
    Need.CONFIGURE: "change its configuration",
}


# What each token scope allows, whatever the role (which may allow less).
_SCOPE_NEEDS: dict[str, frozenset[Need]] = {
    TokenScope.READ: frozenset({Need.VIEW}),
    TokenScope.DEPLOY: frozenset({Need.VIEW, Need.DEPLOY}),
    TokenScope.ADMIN: frozenset(Need),
}


def need_for(request: Request, *, write: Need) -> Need:
    """VIEW for reads, ``write`` for everything else."""
    return Need.VIEW if request.method in SAFE_METHODS else write


def require_scope(request: Request, need: Need) -> None:
    """Refuse (403) when the request's API token has a scope that does not allow ``need``.

    Signed-in dashboard sessions have no scope: their role alone decides.
    """
    token = request.auth
    if not isinstance(token, ApiToken) or need in _SCOPE_NEEDS.get(token.scope, frozenset()):
        return
    wide_enough = " or ".join(scope for scope, needs in _SCOPE_NEEDS.items() if need in needs)
    raise exceptions.PermissionDenied(
        f"This API token has scope {token.scope}; to {_DOING[need]} use a token with "
        f"scope {wide_enough}."
    )


def _authorise(request: Request, membership: Membership, need: Need) -> None:
    if not access.role_allows(membership, _ROLES[need]):
        allowed = " or ".join(_ROLES[need])
        raise exceptions.PermissionDenied(
            f"You are {membership.role} of project {membership.project.slug}; to "
            f"{_DOING[need]} you need to be {allowed}."
        )
    require_scope(request, need)


def _user_id(request: Request) -> int:
    return int(request.user.pk or 0)


def caller(request: Request) -> User:
    """The signed-in user (every API view requires one)."""
    user = request.user
    if not isinstance(user, User):
        raise exceptions.NotAuthenticated()
    return user


def memberships_of(request: Request) -> QuerySet[Membership]:
    """The caller's memberships, with their projects: what a project list shows."""
    return Membership.objects.filter(user_id=_user_id(request)).select_related("project")


def _found(instance: FoundT | None, message: str) -> FoundT:
    if instance is None:
        raise exceptions.NotFound(message)
    return instance


def get_project_for_user(request: Request, slug: str, *, need: Need = Need.VIEW) -> Membership:
    """The caller's membership of project ``slug`` (with the project), or 404, or 403."""
    membership = access.membership_of(_user_id(request), slug)
    membership = _found(membership, f"You are not a member of a project {slug!r}.")
    _authorise(request, membership, need)
    return membership


def get_server_for_user(
    request: Request, slug: str, server_id: int, *, need: Need = Need.VIEW
) -> tuple[Server, Membership]:
    membership = get_project_for_user(request, slug)
    server = access.server_in(membership, server_id)
    server = _found(server, f"Project {slug} has no server {server_id}.")
    _authorise(request, membership, need)
    return server, membership


def get_deployment_for_user(
    request: Request, deployment_id: int, *, need: Need = Need.VIEW
) -> tuple[Deployment, Membership]:
    missing = f"There is no deployment {deployment_id} in your projects."
    membership = _found(access.membership_for_deployment(_user_id(request), deployment_id), missing)
    deployment = _found(access.deployment_in(membership, deployment_id), missing)
    _authorise(request, membership, need)
    return deployment, membership


def get_setting_for_user(
    request: Request, slug: str, model: type[ModelT], pk: int, *, need: Need = Need.VIEW
) -> tuple[ModelT, Membership]:
    """One of a project's settings (a command, a config file, a group...) by id."""
    membership = get_project_for_user(request, slug)
    name = model._meta.verbose_name
    instance = _found(
        access.setting_in(membership, model, pk), f"Project {slug} has no {name} {pk}."
    )
    _authorise(request, membership, need)
    return instance, membership


def get_member_for_user(
    request: Request, slug: str, username: str, *, need: Need = Need.VIEW
) -> tuple[Membership, Membership]:
    """(the member named ``username``, the caller's own membership) of project ``slug``."""
    caller = get_project_for_user(request, slug)
    member = access.member_in(caller, username)
    member = _found(member, f"{username!r} is not a member of project {slug}.")
    _authorise(request, caller, need)
    return member, caller


def get_release_for_user(
    request: Request, slug: str, server_id: int, name: str
) -> tuple[Release, Server]:
    """A release still kept on the server (removed ones are gone for good)."""
    server, _ = get_server_for_user(request, slug, server_id)
    release = _found(
        access.release_on(server, name), f"Server {server.name} keeps no release {name!r}."
    )
    return release, server


# --------------------------------------------------------------------------- errors


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The object is not in a state that allows this."
    default_code = "conflict"


class TooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "too_large"


def exception_handler(exc: Exception, context: Mapping[str, Any]) -> Response | None:
    """DRF's handler, plus the errors our services raise, as JSON that names the field.

    InvalidInput and DeploymentRefused become 400 ``{field: [message]}``; a Django
    ValidationError without a field becomes 400 ``{"detail": message}``; DeploymentFinished,
    DeploymentWrongState, LockBreakRefused, LockStateError, and a deployment refused by a
    stack lock, a freeze window or a failed gate (DeploymentLocked, DeploymentFrozen,
    DeploymentGated) become 409; a freeze or gates override by someone who is not an admin
    (FreezeOverrideForbidden, GateOverrideForbidden), an approval that does not count
    (ApprovalRefused) and a server outside a deployer's deploy rights (DeployRightsForbidden)
    403; a body over Django's upload limit 413
    (rather than an HTML page), one with more fields or files than Django takes 400 (the
    API's undocumented HTML 400 that the schema test's generated forms met). The database
    unreachable (deployer.db.UNAVAILABLE_ERRORS) is 503 ``{"detail": ...}`` with
    Retry-After: the transaction was rolled back, so trying again records the request once.
    """
    if isinstance(exc, UNAVAILABLE_ERRORS):
        logger.error("Database unavailable: %s", exc)
        return Response(
            {"detail": UNAVAILABLE_MESSAGE},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    if isinstance(exc, InvalidInput):
        message = str(exc).removeprefix(f"{exc.field}: ")
        exc = exceptions.ValidationError({exc.field: [message]})
    elif isinstance(
        exc,
        FreezeOverrideForbidden | DeployRightsForbidden | GateOverrideForbidden | ApprovalRefused,
    ):
        exc = exceptions.PermissionDenied(str(exc))
    elif isinstance(exc, DeploymentLocked | DeploymentFrozen | DeploymentGated):
        exc = Conflict(str(exc))
    elif isinstance(exc, DeploymentRefused):
        exc = exceptions.ValidationError({exc.field: [str(exc)]})
    elif isinstance(
        exc, DeploymentFinished | DeploymentWrongState | LockBreakRefused | LockStateError
    ):
        exc = Conflict(str(exc))
    elif isinstance(exc, TooManyFieldsSent | TooManyFilesSent):
        # Django's own 400 page would answer HTML to a JSON client.
        exc = exceptions.ParseError(
            f"The request has more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS} fields "
            f"or {settings.DATA_UPLOAD_MAX_NUMBER_FILES} files."
        )
    elif isinstance(exc, RequestDataTooBig):
        exc = TooLarge(
            f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."
        )
    elif isinstance(exc, DjangoValidationError):
        if hasattr(exc, "error_dict"):
            exc = exceptions.ValidationError(exc.message_dict)
        else:
            exc = exceptions.ValidationError({"detail": " ".join(exc.messages)})
    return drf_exception_handler(exc, dict(context))


@extend_schema(exclude=True)
@api_view(["GET", "POST", "PUT", "PATCH", "DELETE"])
def not_found(request: Request, path: str) -> Response:
    """Any other address under /api/v1/: a JSON 404 like every other error."""
    raise exceptions.NotFound(f"There is no API address /api/v1/{path}.")


# --------------------------------------------------------------------------- links


def api_url(view_name: str, /, **kwargs: object) -> str:
    """The absolute address of the API view ``view_name`` (named in deployer/api_urls.py)."""
    return absolute(reverse(view_name, kwargs=kwargs))


class Pagination(PageNumberPagination):
    """Page links under BASE_URL, like every other address in an answer."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200

    def _here(self) -> str:
        assert self.request is not None
        return absolute(self.request.get_full_path())

    def get_next_link(self) -> str | None:
        page = self.page
        if page is None or not page.has_next():
            return None
        return replace_query_param(self._here(), self.page_query_param, page.next_page_number())

    def get_previous_link(self) -> str | None:
        page = self.page
        if page is None or not page.has_previous():
            return None
        number = page.previous_page_number()
        if number == 1:
            return remove_query_param(self._here(), self.page_query_param)
        return replace_query_param(self._here(), self.page_query_param, number)


# --------------------------------------------------------------------------- schema

_ERROR = {"$ref": "#/components/schemas/Error"}
_FIELD_ERRORS = {"$ref": "#/components/schemas/FieldErrors"}


def document_errors(
    result: dict[str, Any], generator: object, request: object, public: bool
) -> dict[str, Any]:
    """Add the error answers every operation can give (a drf-spectacular postprocessing hook).

    Views raise them through the access helpers and the exception handler, the same way
    everywhere, so they are described here once rather than on each view.
    """
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = {
        "type": "object",
        "properties": {"detail": {"type": "string"}},
        "required": ["detail"],
    }
    schemas["FieldErrors"] = {
        "type": "object",
        "description": "Messages by field name (a list of messages each), or "
        '{"detail": message} for an error that concerns no one field.',
        "additionalProperties": {},
    }
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            errors = {
                "401": (
                    "Not signed in: no token, or an unknown, revoked or expired one.",
                    _ERROR,
                )
            }
            if "{" in path:
                errors["404"] = ("Not found among the caller's projects.", _ERROR)
            if method != "get":
                errors["403"] = (
                    "The caller's role on the project, or the API token's scope, does not "
                    "allow it.",
                    _ERROR,
                )
            if method != "get" or any(
                parameter.get("in") == "query" for parameter in operation.get("parameters", [])
            ):
                errors["400"] = (
                    "The input was refused; the answer names the field.",
                    _FIELD_ERRORS,
                )
            if method == "post" and path.endswith("/templates/"):
                errors["404"] = ("The project named in the body is not among yours.", _ERROR)
            if "requestBody" in operation:
                errors["413"] = ("The body is larger than the server accepts.", _ERROR)
                errors["415"] = ("The body is not JSON, a form or multipart.", _ERROR)
            if method == "post" and path.endswith(("/deployments/", "/rollback/")):
                errors["409"] = (
                    "A deployment refused by a stack lock (rollbacks pass), by a freeze "
                    "window (an admin may give freeze_override_reason) or by a failed gate "
                    "(an admin may give gates_override_reason); the message says which.",
                    _ERROR,
                )
            if path.endswith("/deploy-lock/"):
                errors["409"] = ("It is locked already (POST), or not locked (DELETE).", _ERROR)
            elif path.endswith("/cancel/"):
                errors["409"] = ("The deployment already finished.", _ERROR)
            elif path.endswith("/switch-back/"):
                errors["409"] = (
                    "A deployment is queued or running on the group's servers.",
                    _ERROR,
                )
            elif path.endswith(("/promote/", "/abort/", "/approve/", "/gates-override/")):
                errors["409"] = ("The deployment is not in a state that allows this.", _ERROR)
            elif path.endswith("/retry/"):
                errors["409"] = (
                    "The deployment is still queued or running, or succeeded on every server; "
                    "or the retry is refused by a stack lock or a freeze window.",
                    _ERROR,
                )
            elif path.endswith("/promotions/"):
                errors["409"] = (
                    "The deployment did not succeed or is not a deploy or a promotion; or the "
                    "promotion is refused by a stack lock or a freeze window.",
                    _ERROR,
                )
            elif path.endswith("/lock/break/"):
                errors["409"] = (
                    "The lock was not broken: its deployment is still at work (see force), it "
                    "changed meanwhile, or the server could not be reached or read.",
                    _ERROR,
                )
            for code, (description, schema) in errors.items():
                responses.setdefault(
                    code,
                    {
                        "description": description,
                        "content": {"application/json": {"schema": schema}},
                    },
                )
    return result


class BearerTokenScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = "projects.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token (slw_...) issued in the dashboard or with "
            "`manage.py issue_token USERNAME`.",
        }
