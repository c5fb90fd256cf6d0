"""Account pages: API tokens; the API docs; Prometheus' /metrics. (Signing in and out and
changing the password are Django's own views, with Slipway's templates.)"""

from __future__ import annotations

import hmac

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.contrib.auth.views import redirect_to_login
from django.db import DatabaseError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularSwaggerSplitView
from prometheus_client.exposition import choose_encoder
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from builds.metrics import DatabaseCollector
from projects.dashboard import SERVICE_ERRORS, add_service_error
from projects.forms import ApiTokenForm
from projects.models import ApiToken, is_site_admin
from projects.services import api_token_create, api_token_revoke, token_expiry


def _user(request: HttpRequest) -> User:
    user = request.user
    assert isinstance(user, User)  # login_required let only a signed-in user through
    return user


def _get_token_for_user(request: HttpRequest, token_id: int) -> ApiToken:
    """One of the caller's own tokens; anybody else's is 404."""
    token = ApiToken.objects.filter(pk=token_id, user_id=_user(request).pk).first()
    if token is None:
        raise Http404("No such token")
    return token


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def api_tokens(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    form = ApiTokenForm(request.POST or None)
    issued: tuple[ApiToken, str] | None = None
    if request.method == "POST" and form.is_valid():
        try:
            data = form.cleaned_data
            issued = api_token_create(
                user=user,
                name=data["name"],
                scope=data["scope"],
                expires_at=token_expiry(days=data["expires_in_days"], at=data["expires_at"]),
            )
        except SERVICE_ERRORS as exc:
            add_service_error(form, exc)
        else:
            # Rendered, not redirected: this answer is the only place the token ever appears
            # (never_cache keeps it out of the browser's cache).
            form = ApiTokenForm()
    tokens = ApiToken.objects.filter(user=user).order_by("revoked_at", "-created_at")
    return render(
        request,
        "account/tokens.html",
        {
            "form": form,
            "tokens": tokens,
            "issued": issued[0] if issued else None,
            "issued_token": issued[1] if issued else "",
        },
    )


@login_required
@require_POST
def api_token_revoke_view(request: HttpRequest, token_id: int) -> HttpResponse:
    token = _get_token_for_user(request, token_id)
    api_token_revoke(token=token, actor=_user(request))
    messages.success(request, f"The token {token.name} ({token.prefix}…) is revoked.")
    return redirect("api-tokens")


class ApiDocsView(SpectacularSwaggerSplitView):
    """Swagger UI for signed-in users (a session, or an API token); anybody else is sent to
    the sign-in page. Its start-up script is a separate request (the "split" view) and its
    assets come from drf-spectacular-sidecar, so the page passes the CSP."""

    template_name = "api_docs.html"
    permission_classes = [AllowAny]  # checked below, to redirect rather than answer 401

    @extend_schema(exclude=True)
    def get(self, request: Request, *args: object, **kwargs: object) -> Response | HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        response: Response = super().get(request, *args, **kwargs)  # type: ignore[no-untyped-call]
        return response


def _bearer_token_matches(request: HttpRequest, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # compare_digest: the time taken says nothing about how much of the token was right.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


@never_cache
@require_http_methods(["GET"])
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics (builds.metrics), for a scrape carrying SLIPWAY_METRICS_TOKEN as a
    Bearer token, or a site admin's session. Without the setting, anybody else gets 404 (as if
    there were no such page); with it, a missing or wrong token gets 401 (docs/operations.md).
    A database that does not answer is a 503: the scrape fails and Prometheus' `up` says so."""
    token = settings.METRICS_TOKEN
    allowed = is_site_admin(request.user) or (  # type: ignore[arg-type]
        bool(token) and _bearer_token_matches(request, token)
    )
    if not allowed:
        if not token:
            raise Http404("No such page")
        response = HttpResponse(
            "A Bearer token (SLIPWAY_METRICS_TOKEN) is needed.\n",
            status=401,
            content_type="text/plain; charset=utf-8",
        )
        response["WWW-Authenticate"] = 'Bearer realm="slipway metrics"'
        return response
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    try:
        body = encoder(DatabaseCollector(window_seconds=settings.METRICS_WINDOW))
    except DatabaseError:
        return HttpResponse(
            "The database did not answer.\n",
            status=503,
            content_type="text/plain; charset=utf-8",
        )
    return HttpResponse(body, content_type=content_type)
