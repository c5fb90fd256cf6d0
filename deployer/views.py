"""Account pages: API tokens; and the API docs. (Signing in and out and changing the password
are Django's own views, with Slipway's templates.)"""

from __future__ import annotations

import sys

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.views import defaults
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularSwaggerSplitView
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from deployer.db import RETRY_AFTER_SECONDS, UNAVAILABLE_ERRORS, UNAVAILABLE_MESSAGE
from projects.dashboard import SERVICE_ERRORS, add_service_error
from projects.forms import ApiTokenForm
from projects.models import ApiToken
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


def server_error(request: HttpRequest) -> HttpResponse:
    """Django's handler500: the database unreachable (deployer.db.UNAVAILABLE_ERRORS, from a
    view or a middleware: sessions, sign-in) is a 503 with Retry-After, JSON for the API and
    webhooks, a plain page elsewhere; anything else is Django's own 500 page."""
    if not isinstance(sys.exc_info()[1], UNAVAILABLE_ERRORS):
        return defaults.server_error(request)
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    if request.path.startswith(("/api/", "/hooks/")):
        return JsonResponse({"detail": UNAVAILABLE_MESSAGE}, status=503, headers=headers)
    # Rendered without the request: its context processors would read the session (the
    # database again).
    body = render_to_string("503.html", {"message": UNAVAILABLE_MESSAGE})
    return HttpResponse(body, status=503, headers=headers)
