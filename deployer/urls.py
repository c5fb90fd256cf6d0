from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.http import HttpRequest, JsonResponse
from django.urls import include, path, register_converter
from django.views.decorators.cache import never_cache
from drf_spectacular.views import SpectacularAPIView

from builds import views as build_views
from builds import webhooks
from deployer import health, views
from projects import account_views


@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """The database, the broker and the live workers (deployer.health); 503 when the
    database is down. Open to anybody: it names no host, URL or secret."""
    document, status = health.report()
    return JsonResponse(document, status=status)


class TokenConverter:
    """An unguessable URL token (``secrets.token_urlsafe``: letters, digits, "-" and "_"), so
    that nothing else in that segment (a NUL byte, which PostgreSQL refuses) reaches a query:
    such a path is a 404."""

    regex = r"[A-Za-z0-9_-]{1,128}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(TokenConverter, "token")

# The database unreachable is a 503, not a 500 (deployer.db.UNAVAILABLE_ERRORS).
handler500 = "deployer.views.server_error"

urlpatterns = [
    path("login/", account_views.SignInView.as_view(), name="login"),
    path("login/code/", account_views.sign_in_code, name="login-code"),
    path(
        "invitation/<uidb64>/<token>/",
        account_views.InvitationView.as_view(),
        name="invitation",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "account/password/",
        auth_views.PasswordChangeView.as_view(),
        name="password_change",
    ),
    path(
        "account/password/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path("account/tokens/", views.api_tokens, name="api-tokens"),
    path(
        "account/tokens/<int:token_id>/revoke/",
        views.api_token_revoke_view,
        name="api-token-revoke",
    ),
    path("account/two-factor/", account_views.two_factor, name="two-factor"),
    path("users/", account_views.users, name="users"),
    path("users/<str:username>/<slug:action>/", account_views.user_action, name="user-action"),
    path("healthz", healthz, name="healthz"),
    path("metrics", views.metrics, name="metrics"),
    path("api/v1/", include("deployer.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", views.ApiDocsView.as_view(url_name="api-schema"), name="api-docs"),
    path("django-admin/", admin.site.urls),
    path("hooks/<token:token>/", webhooks.receive, name="webhook"),
    path("badges/<token:token>.svg", build_views.project_badge_view, name="project-badge"),
    path(
        "badges/servers/<int:server_id>-<token:signature>.svg",
        build_views.server_badge_view,
        name="server-badge",
    ),
    path("", include("projects.urls")),
]
