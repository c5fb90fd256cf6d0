"""API views for projects, their members and their settings.

Each view parses, authorises through one access helper (deployer.api) and calls a service.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from django.db import models
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.generics import GenericAPIView, ListCreateAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from builds.engine.errors import InvalidInput
from builds.engine.settings_file import SettingsFileError
from builds.integrations import integration_create, integration_delete, integration_update
from builds.notifications import notification_create, notification_delete, notification_update
from deployer.api import (
    Need,
    api_url,
    caller,
    get_member_for_user,
    get_project_for_user,
    get_setting_for_user,
    memberships_of,
    need_for,
    require_scope,
)
from deployer.links import index_page
from projects.models import (
    ApiToken,
    BuildCommand,
    Command,
    ConfigFile,
    EnvironmentVariable,
    ExcludedFile,
    FreezeWindow,
    Integration,
    Membership,
    Notification,
    Project,
)
from projects.serializers import (
    ApiTokenCreateSerializer,
    ApiTokenIssuedSerializer,
    ApiTokenSerializer,
    BuildCommandSerializer,
    CommandSerializer,
    ConfigFileSerializer,
    DeliverySerializer,
    EnvironmentVariableSerializer,
    ExcludedFileSerializer,
    FreezeWindowSerializer,
    IntegrationSerializer,
    MemberCreateSerializer,
    MemberSerializer,
    MemberUpdateSerializer,
    NotificationSerializer,
    ProjectCreateSerializer,
    ProjectInputSerializer,
    ProjectSerializer,
    RepositoryCheckSerializer,
    SettingsExportSerializer,
    SettingsImportResultSerializer,
    SettingsImportSerializer,
    TemplateSaveSerializer,
    TemplateSerializer,
)
from projects.services import (
    TemplateSource,
    api_token_create,
    freeze_window_create,
    freeze_window_delete,
    freeze_window_update,
    member_add,
    member_remove,
    member_update,
    project_badge_rotate,
    project_delete,
    project_register,
    project_repository_check,
    project_servers_by_id,
    project_setting_create,
    project_setting_delete,
    project_setting_update,
    project_template_delete,
    project_template_save,
    project_trust_repository_host_key,
    project_update,
    saved_template_source,
    template_source,
    templates_for,
    token_expiry,
)
from projects.settings_code import settings_document, settings_export_yaml, settings_import
from servers.serializers import TrustSerializer

NO_CONTENT = {204: OpenApiResponse(description="Deleted.")}
# The deliveries a notification's delivery log shows, newest first.
RECENT_DELIVERIES = 100


class MeSerializer(serializers.Serializer[Any]):
    username = serializers.CharField()
    url = serializers.CharField()
    html_url = serializers.CharField()
    token = ApiTokenSerializer(
        allow_null=True,
        help_text="The API token this request came with (its scope and expiry); null when "
        "signed in on the dashboard.",
    )


class MeView(APIView):
    @extend_schema(responses=MeSerializer, tags=["account"])
    def get(self, request: Request) -> Response:
        token = request.auth if isinstance(request.auth, ApiToken) else None
        return Response(
            {
                "username": request.user.get_username(),
                "url": api_url("api-me"),
                "html_url": index_page(),
                "token": ApiTokenSerializer(token).data if token is not None else None,
            }
        )


class TokenListView(APIView):
    @extend_schema(
        responses=ApiTokenSerializer(many=True),
        tags=["account"],
        description="The caller's own API tokens, revoked ones included; never their secrets.",
    )
    def get(self, request: Request) -> Response:
        tokens = ApiToken.objects.filter(user=caller(request)).order_by("revoked_at", "-created_at")
        return Response(ApiTokenSerializer(tokens, many=True).data)

    @extend_schema(
        request=ApiTokenCreateSerializer,
        responses={201: ApiTokenIssuedSerializer},
        tags=["account"],
        description="Issue a token for the caller. A token may issue only tokens of a scope "
        "and an expiry no wider than its own, and needs the admin scope to issue any.",
    )
    def post(self, request: Request) -> Response:
        require_scope(request, Need.CONFIGURE)
        serializer = ApiTokenCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        record, token = api_token_create(
            user=caller(request),
            name=data["name"],
            scope=data["scope"],
            expires_at=token_expiry(days=data.get("expires_in_days"), at=data.get("expires_at")),
            via=request.auth if isinstance(request.auth, ApiToken) else None,
        )
        answer = {**ApiTokenSerializer(record).data, "token": token}
        return Response(answer, status=status.HTTP_201_CREATED)


def _project_data(project: Project, membership: Membership) -> dict[str, Any]:
    serializer = ProjectSerializer(project, context={"roles": {project.pk: membership.role}})
    return dict(serializer.data)


class ProjectListView(APIView):
    @extend_schema(responses=ProjectSerializer(many=True), tags=["projects"])
    def get(self, request: Request) -> Response:
        roles = {membership.project_id: membership.role for membership in memberships_of(request)}
        projects = Project.objects.filter(pk__in=roles)
        return Response(ProjectSerializer(projects, many=True, context={"roles": roles}).data)

    @extend_schema(
        request=ProjectCreateSerializer, responses={201: ProjectSerializer}, tags=["projects"]
    )
    def post(self, request: Request) -> Response:
        require_scope(request, Need.CONFIGURE)
        serializer = ProjectCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        project = project_register(owner=caller(request), **serializer.validated_data)
        membership = get_project_for_user(request, project.slug)
        return Response(_project_data(project, membership), status=status.HTTP_201_CREATED)


class ProjectDetailView(APIView):
    @extend_schema(responses=ProjectSerializer, tags=["projects"])
    def get(self, request: Request, slug: str) -> Response:
        membership = get_project_for_user(request, slug)
        return Response(_project_data(membership.project, membership))

    @extend_schema(
        request=ProjectInputSerializer(partial=True),
        responses=ProjectSerializer,
        tags=["projects"],
    )
    def patch(self, request: Request, slug: str) -> Response:
        membership = get_project_for_user(request, slug, need=Need.CONFIGURE)
        serializer = ProjectInputSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        project = project_update(
            project=membership.project, actor=membership.user, **serializer.validated_data
        )
        return Response(_project_data(project, membership))

    @extend_schema(responses=NO_CONTENT, tags=["projects"])
    def delete(self, request: Request, slug: str) -> Response:
        membership = get_project_for_user(request, slug, need=Need.CONFIGURE)
        project_delete(project=membership.project, actor=membership.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class RepositoryCheckView(APIView):
    @extend_schema(
        request=None,
        responses=RepositoryCheckSerializer,
        operation_id="projects_repository_check",
        tags=["projects"],
        description="Read the host key the ssh repository's host offers and compare it with "
        "the trusted one. Problems on the host's side are answered with an error, never with "
        "an error status.",
    )
    def post(self, request: Request, slug: str) -> Response:
        membership = get_project_for_user(request, slug, need=Need.DEPLOY)
        result = project_repository_check(project=membership.project)
        return Response(RepositoryCheckSerializer(dataclasses.asdict(result)).data)


class RepositoryTrustView(APIView):
    @extend_schema(
        request=TrustSerializer,
        responses=ProjectSerializer,
        operation_id="projects_repository_trust",
        tags=["projects"],
        description="Trust the ssh repository host's key. The fingerprint must be the one the "
        "host offers right now (see repository/check/).",
    )
    def post(self, request: Request, slug: str) -> Response:
        membership = get_project_for_user(request, slug, need=Need.CONFIGURE)
        serializer = TrustSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        project = project_trust_repository_host_key(
            project=membership.project, actor=membership.user, **serializer.validated_data
        )
        return Response(_project_data(project, membership))


class BadgeRotateView(APIView):
    @extend_schema(
        request=None,
        responses=ProjectSerializer,
        operation_id="projects_badge_rotate",
        tags=["projects"],
        description="Give the project new badge URLs (its own and its servers'); the old ones "
        "answer 404 from now on. Admins only.",
    )
    def post(self, request: Request, slug: str) -> Response:
        membership = get_project_for_user(request, slug, need=Need.CONFIGURE)
        project = project_badge_rotate(project=membership.project, actor=membership.user)
        return Response(_project_data(project, membership))


# --------------------------------------------------------------------------- settings as code


class SettingsExportView(APIView):
    @extend_schema(
        responses=SettingsExportSerializer,
        tags=["projects"],
        description="The project's settings as YAML and JSON (docs/settings-as-code.md): "
        "paths and switches, build and SSH commands, excluded files, health checks, "
        "config files (their keys only), variables (a secret one with its value empty) and "
        "the groups' strategies. Any member may read them.",
    )
    def get(self, request: Request, slug: str) -> Response:
        membership = get_project_for_user(request, slug)
        project = membership.project
        answer = {"yaml": settings_export_yaml(project), "document": settings_document(project)}
        return Response(SettingsExportSerializer(answer).data)


class SettingsImportView(APIView):
    @extend_schema(
        request=SettingsImportSerializer,
        responses=SettingsImportResultSerializer,
        tags=["projects"],
        description="Apply settings as GET settings/ answers them (admins of the project). "
        "Each key present whose value differs replaces the project's; a secret variable "
        "without its value and a config file given as its keys keep what is stored. With "
        "dry_run, only says what would change. An invalid document is 400 naming the line: "
        '{"yaml": ["line 4: build_commands[0].timeout_seconds: ..."]}.',
    )
    def post(self, request: Request, slug: str) -> Response:
        require_scope(request, Need.CONFIGURE)
        membership = get_project_for_user(request, slug, need=Need.CONFIGURE)
        serializer = SettingsImportSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            changed = settings_import(
                project=membership.project,
                actor=membership.user,
                content=data["yaml"].encode(),
                dry_run=data["dry_run"],
            )
        except SettingsFileError as exc:
            raise InvalidInput("yaml", exc.located) from None
        answer = {"dry_run": data["dry_run"], "changed": changed}
        return Response(SettingsImportResultSerializer(answer).data)


# --------------------------------------------------------------------------- templates


def template_data(source: TemplateSource) -> dict[str, Any]:
    saved = source.saved
    return {
        "id": source.reference,
        "name": source.name,
        "description": source.description,
        "builtin": source.builtin,
        "source_project": saved.source_project if saved else "",
        "created_by": saved.created_by.username if saved and saved.created_by else None,
        "created_at": saved.created_at if saved else None,
        "contents": dict(source.contents),
        "url": api_url("api-template", id=source.reference),
    }


class TemplateListView(APIView):
    @extend_schema(
        responses=TemplateSerializer(many=True),
        tags=["templates"],
        description="The templates you may start a project from: the built-ins, then the "
        "saved ones (those only if you may create projects).",
    )
    def get(self, request: Request) -> Response:
        sources = templates_for(caller(request))
        return Response(TemplateSerializer([template_data(s) for s in sources], many=True).data)

    @extend_schema(
        request=TemplateSaveSerializer,
        responses={201: TemplateSerializer},
        tags=["templates"],
        description="Save a project's settings as a template (admins of the project). No "
        "secret is copied: a secret variable keeps its name only, config files their keys "
        "without their values (docs/templates.md).",
    )
    def post(self, request: Request) -> Response:
        require_scope(request, Need.CONFIGURE)
        serializer = TemplateSaveSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        membership = get_project_for_user(request, data["project"], need=Need.CONFIGURE)
        template = project_template_save(
            project=membership.project,
            actor=membership.user,
            name=data["name"],
            description=data.get("description", ""),
        )
        answer = template_data(saved_template_source(template))
        return Response(TemplateSerializer(answer).data, status=status.HTTP_201_CREATED)


def _template_for_user(request: Request, reference: str) -> TemplateSource:
    source = template_source(caller(request), reference)
    if source is None:
        raise NotFound(f"There is no template {reference!r} you may use.")
    return source


class TemplateDetailView(APIView):
    @extend_schema(responses=TemplateSerializer, tags=["templates"])
    def get(self, request: Request, id: str) -> Response:
        return Response(TemplateSerializer(template_data(_template_for_user(request, id))).data)

    @extend_schema(
        responses=NO_CONTENT,
        tags=["templates"],
        description="Delete a saved template: the user who saved it, or a site admin. "
        "Projects made from it keep their settings; built-ins cannot be deleted.",
    )
    def delete(self, request: Request, id: str) -> Response:
        require_scope(request, Need.CONFIGURE)
        source = _template_for_user(request, id)
        if source.saved is None:
            raise PermissionDenied(
                "Built-in templates are part of Slipway: they cannot be deleted."
            )
        project_template_delete(template=source.saved, actor=caller(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


# --------------------------------------------------------------------------- members


class MemberListView(APIView):
    @extend_schema(responses=MemberSerializer(many=True), tags=["members"])
    def get(self, request: Request, slug: str) -> Response:
        membership = get_project_for_user(request, slug)
        members = membership.project.memberships.select_related("user", "project").order_by(
            "user__username"
        )
        return Response(MemberSerializer(members, many=True).data)

    @extend_schema(
        request=MemberCreateSerializer, responses={201: MemberSerializer}, tags=["members"]
    )
    def post(self, request: Request, slug: str) -> Response:
        caller = get_project_for_user(request, slug, need=Need.CONFIGURE)
        serializer = MemberCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        member = member_add(project=caller.project, actor=caller.user, **serializer.validated_data)
        return Response(MemberSerializer(member).data, status=status.HTTP_201_CREATED)


class MemberDetailView(APIView):
    @extend_schema(responses=MemberSerializer, tags=["members"])
    def get(self, request: Request, slug: str, username: str) -> Response:
        member, _ = get_member_for_user(request, slug, username)
        return Response(MemberSerializer(member).data)

    @extend_schema(request=MemberUpdateSerializer, responses=MemberSerializer, tags=["members"])
    def patch(self, request: Request, slug: str, username: str) -> Response:
        member, caller = get_member_for_user(request, slug, username, need=Need.CONFIGURE)
        serializer = MemberUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        if "deploy_servers" in data:
            data["deploy_servers"] = project_servers_by_id(caller.project, data["deploy_servers"])
        member = member_update(membership=member, actor=caller.user, **data)
        return Response(MemberSerializer(member).data)

    @extend_schema(responses=NO_CONTENT, tags=["members"])
    def delete(self, request: Request, slug: str, username: str) -> Response:
        member, caller = get_member_for_user(request, slug, username, need=Need.CONFIGURE)
        member_remove(membership=member, actor=caller.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --------------------------------------------------------------------------- settings
# Commands, config files, excluded files, environment variables, build commands (and server
# groups, in servers/api.py) share these two views: members read them, admins change them.


class SettingListView(ListCreateAPIView[Any]):
    model: ClassVar[type[models.Model]]
    pagination_class = None
    membership: Membership

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        self.membership = get_project_for_user(
            request, kwargs["slug"], need=need_for(request, write=Need.CONFIGURE)
        )

    def get_queryset(self) -> models.QuerySet[Any]:
        if getattr(self, "swagger_fake_view", False):
            return self.model._default_manager.none()
        return self.model._default_manager.filter(project=self.membership.project)

    def get_serializer_context(self) -> dict[str, Any]:
        context = dict(super().get_serializer_context())
        if hasattr(self, "membership"):
            context.update(project=self.membership.project, role=self.membership.role)
        return context

    def perform_create(self, serializer: Any) -> None:
        serializer.instance = project_setting_create(
            project=self.membership.project,
            actor=self.membership.user,
            model=self.model,
            data=serializer.validated_data,
        )

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        project = self.membership.project
        instances = list(self.get_queryset())
        for instance in instances:
            setattr(instance, "project", project)  # noqa: B010 (saves a query per row)
        return Response(self.get_serializer(instances, many=True).data)


class SettingDetailView(
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    GenericAPIView[Any],
):
    model: ClassVar[type[models.Model]]
    membership: Membership
    lookup_url_kwarg = "pk"

    def get_queryset(self) -> models.QuerySet[Any]:
        return self.model._default_manager.none()

    def get_object(self) -> Any:
        instance, self.membership = get_setting_for_user(
            self.request,
            self.kwargs["slug"],
            self.model,
            int(self.kwargs["pk"]),
            need=need_for(self.request, write=Need.CONFIGURE),
        )
        return instance

    def get_serializer_context(self) -> dict[str, Any]:
        context = dict(super().get_serializer_context())
        if hasattr(self, "membership"):
            context.update(project=self.membership.project, role=self.membership.role)
        return context

    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.retrieve(request, *args, **kwargs)

    def patch(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.partial_update(request, *args, **kwargs)

    def delete(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.destroy(request, *args, **kwargs)

    def perform_update(self, serializer: Any) -> None:
        serializer.instance = project_setting_update(
            instance=serializer.instance,
            actor=self.membership.user,
            data=serializer.validated_data,
        )

    def perform_destroy(self, instance: models.Model) -> None:
        project_setting_delete(instance=instance, actor=self.membership.user)


def _tagged(tag: str) -> Any:
    return extend_schema(tags=[tag])


@_tagged("commands")
class CommandListView(SettingListView):
    model = Command
    serializer_class = CommandSerializer


@_tagged("commands")
class CommandDetailView(SettingDetailView):
    model = Command
    serializer_class = CommandSerializer


@_tagged("config files")
class ConfigFileListView(SettingListView):
    model = ConfigFile
    serializer_class = ConfigFileSerializer


@_tagged("config files")
class ConfigFileDetailView(SettingDetailView):
    model = ConfigFile
    serializer_class = ConfigFileSerializer


@_tagged("excluded files")
class ExcludedFileListView(SettingListView):
    model = ExcludedFile
    serializer_class = ExcludedFileSerializer


@_tagged("excluded files")
class ExcludedFileDetailView(SettingDetailView):
    model = ExcludedFile
    serializer_class = ExcludedFileSerializer


@_tagged("environment")
class EnvironmentListView(SettingListView):
    model = EnvironmentVariable
    serializer_class = EnvironmentVariableSerializer


@_tagged("environment")
class EnvironmentDetailView(SettingDetailView):
    model = EnvironmentVariable
    serializer_class = EnvironmentVariableSerializer


@_tagged("build commands")
class BuildCommandListView(SettingListView):
    model = BuildCommand
    serializer_class = BuildCommandSerializer


@_tagged("build commands")
class BuildCommandDetailView(SettingDetailView):
    model = BuildCommand
    serializer_class = BuildCommandSerializer


# --------------------------------------------------------------------------- notifications
# Members read where notifications go (never a URL's token or a secret); admins change them.


@_tagged("notifications")
class NotificationListView(SettingListView):
    model = Notification
    serializer_class = NotificationSerializer

    def get_queryset(self) -> models.QuerySet[Any]:
        return super().get_queryset().prefetch_related("servers")

    def perform_create(self, serializer: Any) -> None:
        serializer.instance = notification_create(
            project=self.membership.project,
            actor=self.membership.user,
            **serializer.validated_data,
        )


@_tagged("notifications")
class NotificationDetailView(SettingDetailView):
    model = Notification
    serializer_class = NotificationSerializer

    def perform_update(self, serializer: Any) -> None:
        serializer.instance = notification_update(
            notification=serializer.instance,
            actor=self.membership.user,
            **serializer.validated_data,
        )

    def perform_destroy(self, instance: Any) -> None:
        notification_delete(notification=instance, actor=self.membership.user)


class NotificationDeliveryListView(APIView):
    @extend_schema(
        responses=DeliverySerializer(many=True),
        operation_id="projects_notifications_deliveries_list",
        tags=["notifications"],
        description=f"The notification's {RECENT_DELIVERIES} most recent deliveries, newest "
        "first: what was sent, how often it was tried, and why the last attempt failed.",
    )
    def get(self, request: Request, slug: str, pk: int) -> Response:
        notification, _ = get_setting_for_user(request, slug, Notification, pk)
        deliveries = list(
            notification.deliveries.order_by("-created_at", "-id")[:RECENT_DELIVERIES]
        )
        for delivery in deliveries:
            delivery.notification = notification
        return Response(DeliverySerializer(deliveries, many=True).data)


# --------------------------------------------------------------------------- integrations
# Members read where reports go (never the token); admins change them.


@_tagged("integrations")
class IntegrationListView(SettingListView):
    model = Integration
    serializer_class = IntegrationSerializer

    def get_queryset(self) -> models.QuerySet[Any]:
        return super().get_queryset().prefetch_related("servers")

    def perform_create(self, serializer: Any) -> None:
        serializer.instance = integration_create(
            project=self.membership.project,
            actor=self.membership.user,
            **serializer.validated_data,
        )


@_tagged("integrations")
class IntegrationDetailView(SettingDetailView):
    model = Integration
    serializer_class = IntegrationSerializer

    def perform_update(self, serializer: Any) -> None:
        serializer.instance = integration_update(
            integration=serializer.instance,
            actor=self.membership.user,
            **serializer.validated_data,
        )

    def perform_destroy(self, instance: Any) -> None:
        integration_delete(integration=instance, actor=self.membership.user)


class IntegrationDeliveryListView(APIView):
    @extend_schema(
        responses=DeliverySerializer(many=True),
        operation_id="projects_integrations_deliveries_list",
        tags=["integrations"],
        description=f"The integration's {RECENT_DELIVERIES} most recent reports, newest first: "
        "which event, how often it was tried, the provider's last answer and why it failed.",
    )
    def get(self, request: Request, slug: str, pk: int) -> Response:
        integration, _ = get_setting_for_user(request, slug, Integration, pk)
        deliveries = list(integration.deliveries.order_by("-created_at", "-id")[:RECENT_DELIVERIES])
        for delivery in deliveries:
            delivery.integration = integration
        return Response(DeliverySerializer(deliveries, many=True).data)


@extend_schema(tags=["freeze windows"])
class FreezeWindowListView(SettingListView):
    """A project's freeze windows: members read them, admins change them."""

    model = FreezeWindow
    serializer_class = FreezeWindowSerializer

    def perform_create(self, serializer: Any) -> None:
        serializer.instance = freeze_window_create(
            project=self.membership.project,
            actor=self.membership.user,
            **serializer.validated_data,
        )


@extend_schema(tags=["freeze windows"])
class FreezeWindowDetailView(SettingDetailView):
    model = FreezeWindow
    serializer_class = FreezeWindowSerializer

    def perform_update(self, serializer: Any) -> None:
        serializer.instance = freeze_window_update(
            window=serializer.instance,
            actor=self.membership.user,
            **serializer.validated_data,
        )

    def perform_destroy(self, instance: Any) -> None:
        freeze_window_delete(window=instance, actor=self.membership.user)
