"""The JSON API, under /api/v1/ (see deployer/api.py for what every view shares)."""

from __future__ import annotations

from django.urls import path, re_path

from builds import api as builds
from deployer.api import not_found
from projects import api as projects
from servers import api as servers

PROJECT = "projects/<slug:slug>/"
SERVER = PROJECT + "servers/<int:server_id>/"
DEPLOYMENT = "deployments/<int:deployment_id>/"

urlpatterns = [
    path("me/", projects.MeView.as_view(), name="api-me"),
    path("me/tokens/", projects.TokenListView.as_view(), name="api-me-tokens"),
    path("projects/", projects.ProjectListView.as_view(), name="api-projects"),
    path("templates/", projects.TemplateListView.as_view(), name="api-templates"),
    path("templates/<str:id>/", projects.TemplateDetailView.as_view(), name="api-template"),
    path(PROJECT, projects.ProjectDetailView.as_view(), name="api-project"),
    path(
        PROJECT + "repository/check/",
        projects.RepositoryCheckView.as_view(),
        name="api-repository-check",
    ),
    path(PROJECT + "settings/", projects.SettingsExportView.as_view(), name="api-settings"),
    path(
        PROJECT + "settings/import/",
        projects.SettingsImportView.as_view(),
        name="api-settings-import",
    ),
    path(
        PROJECT + "badge/rotate/",
        projects.BadgeRotateView.as_view(),
        name="api-project-badge-rotate",
    ),
    path(
        PROJECT + "repository/trust/",
        projects.RepositoryTrustView.as_view(),
        name="api-repository-trust",
    ),
    # Servers and their releases.
    path(PROJECT + "servers/", servers.ServerListView.as_view(), name="api-servers"),
    path(SERVER, servers.ServerDetailView.as_view(), name="api-server"),
    path(SERVER + "check/", servers.ServerCheckView.as_view(), name="api-server-check"),
    path(SERVER + "drift/", servers.ServerDriftView.as_view(), name="api-server-drift"),
    path(SERVER + "trust/", servers.ServerTrustView.as_view(), name="api-server-trust"),
    path(
        SERVER + "jump-host/trust/",
        servers.ServerJumpTrustView.as_view(),
        name="api-server-jump-trust",
    ),
    path(
        SERVER + "lock/break/", servers.ServerLockBreakView.as_view(), name="api-server-lock-break"
    ),
    path(SERVER + "releases/", servers.ServerReleaseListView.as_view(), name="api-server-releases"),
    path(
        SERVER + "releases/<str:name>/",
        servers.ServerReleaseDetailView.as_view(),
        name="api-server-release",
    ),
    path(SERVER + "rollback/", servers.ServerRollbackView.as_view(), name="api-server-rollback"),
    # Stack locks (docs/locks.md): only rollbacks run while one holds.
    path(
        PROJECT + "deploy-lock/",
        builds.ProjectDeployLockView.as_view(),
        name="api-project-deploy-lock",
    ),
    path(
        SERVER + "deploy-lock/",
        builds.ServerDeployLockView.as_view(),
        name="api-server-deploy-lock",
    ),
    # DORA's four keys (docs/metrics.md).
    path(PROJECT + "metrics/", builds.ProjectMetricsView.as_view(), name="api-project-metrics"),
    re_path(
        r"^projects/(?P<slug>[-a-zA-Z0-9_]+)/metrics/(?P<rows>deployments|days)\.csv$",
        builds.ProjectMetricsCsvView.as_view(),
        name="api-project-metrics-csv",
    ),
    # Scheduled deployments and freeze windows (docs/schedules.md, docs/freeze-windows.md).
    path(PROJECT + "schedules/", builds.ScheduleListView.as_view(), name="api-schedules"),
    path(PROJECT + "schedules/<int:pk>/", builds.ScheduleDetailView.as_view(), name="api-schedule"),
    path(
        PROJECT + "schedules/<int:pk>/runs/",
        builds.ScheduleRunListView.as_view(),
        name="api-schedule-runs",
    ),
    path(
        PROJECT + "freeze-windows/",
        projects.FreezeWindowListView.as_view(),
        name="api-freeze-windows",
    ),
    path(
        PROJECT + "freeze-windows/<int:pk>/",
        projects.FreezeWindowDetailView.as_view(),
        name="api-freeze-window",
    ),
    # Gates (docs/gates.md): policies per environment, and a deployment's checklist.
    path(PROJECT + "gates/", builds.GatePolicyListView.as_view(), name="api-gate-policies"),
    path(
        PROJECT + "gates/<int:pk>/", builds.GatePolicyDetailView.as_view(), name="api-gate-policy"
    ),
    path(PROJECT + "gates/check/", builds.ProjectGatesCheckView.as_view(), name="api-gates-check"),
    # Deployments.
    path(
        PROJECT + "deployments/",
        builds.ProjectDeploymentListView.as_view(),
        name="api-project-deployments",
    ),
    path(DEPLOYMENT, builds.DeploymentDetailView.as_view(), name="api-deployment"),
    path(DEPLOYMENT + "log/", builds.DeploymentLogView.as_view(), name="api-deployment-log"),
    path(
        DEPLOYMENT + "cancel/", builds.DeploymentCancelView.as_view(), name="api-deployment-cancel"
    ),
    path(
        DEPLOYMENT + "rollback/",
        builds.DeploymentRollbackView.as_view(),
        name="api-deployment-rollback",
    ),
    path(
        DEPLOYMENT + "promote/",
        builds.DeploymentPromoteView.as_view(),
        name="api-deployment-promote",
    ),
    path(DEPLOYMENT + "abort/", builds.DeploymentAbortView.as_view(), name="api-deployment-abort"),
    path(
        DEPLOYMENT + "approve/",
        builds.DeploymentApproveView.as_view(),
        name="api-deployment-approve",
    ),
    path(
        DEPLOYMENT + "gates-override/",
        builds.DeploymentGatesOverrideView.as_view(),
        name="api-deployment-gates-override",
    ),
    path(DEPLOYMENT + "retry/", builds.DeploymentRetryView.as_view(), name="api-deployment-retry"),
    path(
        DEPLOYMENT + "promotions/",
        builds.DeploymentPromotionView.as_view(),
        name="api-deployment-promotions",
    ),
    # Project settings: members read them, admins change them.
    path(PROJECT + "commands/", projects.CommandListView.as_view(), name="api-commands"),
    path(PROJECT + "commands/<int:pk>/", projects.CommandDetailView.as_view(), name="api-command"),
    path(PROJECT + "config-files/", projects.ConfigFileListView.as_view(), name="api-config-files"),
    path(
        PROJECT + "config-files/<int:pk>/",
        projects.ConfigFileDetailView.as_view(),
        name="api-config-file",
    ),
    path(
        PROJECT + "excluded-files/",
        projects.ExcludedFileListView.as_view(),
        name="api-excluded-files",
    ),
    path(
        PROJECT + "excluded-files/<int:pk>/",
        projects.ExcludedFileDetailView.as_view(),
        name="api-excluded-file",
    ),
    path(PROJECT + "environment/", projects.EnvironmentListView.as_view(), name="api-environment"),
    path(
        PROJECT + "environment/<int:pk>/",
        projects.EnvironmentDetailView.as_view(),
        name="api-environment-variable",
    ),
    path(
        PROJECT + "build-commands/",
        projects.BuildCommandListView.as_view(),
        name="api-build-commands",
    ),
    path(
        PROJECT + "build-commands/<int:pk>/",
        projects.BuildCommandDetailView.as_view(),
        name="api-build-command",
    ),
    path(PROJECT + "groups/", servers.GroupListView.as_view(), name="api-groups"),
    path(PROJECT + "groups/<int:pk>/", servers.GroupDetailView.as_view(), name="api-group"),
    path(
        PROJECT + "groups/<int:pk>/switch-back/",
        servers.GroupSwitchBackView.as_view(),
        name="api-group-switch-back",
    ),
    path(
        PROJECT + "health-checks/",
        servers.HealthCheckListView.as_view(),
        name="api-health-checks",
    ),
    path(
        PROJECT + "health-checks/<int:pk>/",
        servers.HealthCheckDetailView.as_view(),
        name="api-health-check",
    ),
    path(
        PROJECT + "notifications/",
        projects.NotificationListView.as_view(),
        name="api-notifications",
    ),
    path(
        PROJECT + "notifications/<int:pk>/",
        projects.NotificationDetailView.as_view(),
        name="api-notification",
    ),
    path(
        PROJECT + "notifications/<int:pk>/deliveries/",
        projects.NotificationDeliveryListView.as_view(),
        name="api-notification-deliveries",
    ),
    path(
        PROJECT + "integrations/",
        projects.IntegrationListView.as_view(),
        name="api-integrations",
    ),
    path(
        PROJECT + "integrations/<int:pk>/",
        projects.IntegrationDetailView.as_view(),
        name="api-integration",
    ),
    path(
        PROJECT + "integrations/<int:pk>/deliveries/",
        projects.IntegrationDeliveryListView.as_view(),
        name="api-integration-deliveries",
    ),
    path(PROJECT + "members/", projects.MemberListView.as_view(), name="api-members"),
    path(
        PROJECT + "members/<str:username>/",
        projects.MemberDetailView.as_view(),
        name="api-member",
    ),
    # Last: anything else is a JSON 404, not the dashboard's HTML page.
    re_path(r"^(?P<path>(?s:.*))$", not_found, name="api-not-found"),
]
