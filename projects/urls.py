"""The dashboard's pages (deployer/links.py builds absolute addresses of the main ones)."""

from __future__ import annotations

from django.urls import path

from builds import views as deployments
from projects import views
from servers import views as servers

PROJECT = "projects/<slug:slug>/"
SERVER = PROJECT + "servers/<int:server_id>/"
DEPLOYMENT = PROJECT + "deployments/<int:deployment_id>/"
SETTING = PROJECT + "settings/<slug:kind>/"

urlpatterns = [
    path("", views.index, name="index"),
    path("pending/", deployments.pending_work, name="pending-work"),
    path("projects/new/", views.project_new, name="project-new"),
    path("templates/<str:reference>/delete/", views.template_remove, name="template-delete"),
    path(PROJECT, views.project_detail, name="project-detail"),
    path(PROJECT + "settings/", views.project_settings, name="project-settings"),
    path(PROJECT + "repository/check/", views.repository_check, name="repository-check"),
    path(PROJECT + "repository/trust/", views.repository_trust, name="repository-trust"),
    path(PROJECT + "delete/", views.project_remove, name="project-delete"),
    path(PROJECT + "members/", views.members, name="members"),
    path(PROJECT + "members/<str:username>/role/", views.member_change, name="member-role"),
    path(PROJECT + "members/<str:username>/remove/", views.member_delete, name="member-remove"),
    path(PROJECT + "members/<str:username>/rights/", views.member_rights, name="member-rights"),
    path(PROJECT + "audit/", views.audit_log, name="audit-log"),
    path(PROJECT + "badge/rotate/", views.badge_rotate, name="project-badge-rotate"),
    path(PROJECT + "save-as-template/", views.template_save, name="project-save-template"),
    path(PROJECT + "settings/export/", views.settings_export, name="project-settings-export"),
    path(PROJECT + "settings/import/", views.settings_import_view, name="project-settings-import"),
    path(SETTING, views.setting_list, name="setting-list"),
    path(SETTING + "<int:pk>/", views.setting_edit, name="setting-edit"),
    path(SETTING + "<int:pk>/delete/", views.setting_delete, name="setting-delete"),
    # Servers.
    path(PROJECT + "servers/new/", servers.server_new, name="server-new"),
    path(SERVER, servers.server_detail, name="server-detail"),
    path(SERVER + "edit/", servers.server_edit, name="server-edit"),
    path(SERVER + "delete/", servers.server_remove, name="server-delete"),
    path(SERVER + "test/", servers.server_test, name="server-test"),
    path(SERVER + "drift/", servers.server_drift_check, name="server-drift-check"),
    path(SERVER + "deploy-lock/", deployments.server_lock_view, name="server-deploy-lock"),
    path(SERVER + "trust/", servers.server_trust, name="server-trust"),
    path(SERVER + "jump-host/trust/", servers.server_trust_jump, name="server-trust-jump"),
    path(SERVER + "rollback/", servers.server_rollback, name="server-rollback"),
    path(SERVER + "lock/break/", servers.server_lock_break_view, name="server-lock-break"),
    # Deployments.
    path(PROJECT + "deploy/", deployments.deployment_new, name="deployment-new"),
    path(PROJECT + "lock/", deployments.project_lock_view, name="project-lock"),
    path(PROJECT + "unlock/", deployments.project_unlock_view, name="project-unlock"),
    path(PROJECT + "deployments/", views.deployment_list, name="deployment-list"),
    path(PROJECT + "metrics/", deployments.project_metrics, name="project-metrics"),
    path(DEPLOYMENT, deployments.deployment_detail, name="deployment-detail"),
    path(DEPLOYMENT + "summary/", deployments.deployment_summary, name="deployment-summary"),
    path(DEPLOYMENT + "preview/", deployments.deployment_preview, name="deployment-preview"),
    path(DEPLOYMENT + "cancel/", deployments.deployment_cancel_view, name="deployment-cancel"),
    path(DEPLOYMENT + "redeploy/", deployments.deployment_redeploy, name="deployment-redeploy"),
    path(DEPLOYMENT + "rollback/", deployments.deployment_roll_back, name="deployment-rollback"),
    path(DEPLOYMENT + "promote/", deployments.deployment_promote_view, name="deployment-promote"),
    path(DEPLOYMENT + "abort/", deployments.deployment_abort_view, name="deployment-abort"),
    path(DEPLOYMENT + "approve/", deployments.deployment_approve_view, name="deployment-approve"),
    path(
        DEPLOYMENT + "gates-override/",
        deployments.deployment_gates_override_view,
        name="deployment-gates-override",
    ),
    path(DEPLOYMENT + "retry/", deployments.deployment_retry_view, name="deployment-retry"),
    path(
        DEPLOYMENT + "promotions/",
        deployments.deployment_promote_artefact_view,
        name="deployment-promotions",
    ),
    path(
        PROJECT + "groups/<int:group_id>/switch-back/",
        deployments.group_switch_back_view,
        name="group-switch-back",
    ),
    # The published schema of .slipway.yml (docs/settings-as-code.md).
    path("schema/slipway.json", views.settings_schema, name="settings-schema"),
    # The user guides, as plain text.
    path("docs/<slug:name>.md", views.docs_page, name="docs"),
]
