"""Two-factor sign-in, enforced on every page (docs/users.md).

- A session whose user has an authenticator but gave no code in it (signed in before the
  authenticator was added, in another browser) is signed out.
- When the site requires two-factor sign-in (SiteSettings.require_two_factor), a user without
  an authenticator reaches only the set-up page and signing out until they have one.

API requests with a Bearer token carry no session and pass: a token is the API's second factor.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.contrib.auth import logout
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.urls import reverse

from projects.accounts import has_two_factor, must_enrol, session_verified

ENROLMENT_URL_NAMES = ("two-factor", "logout")


class TwoFactorMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = request.user
        if user.is_authenticated and not request.path.startswith(settings.STATIC_URL):
            if not session_verified(user) and has_two_factor(user):
                logout(request)
                return redirect_to_login(request.get_full_path())
            if must_enrol(user) and request.path not in _enrolment_paths():
                message = "This Slipway requires two-factor sign-in: set it up first."
                if request.path.startswith("/api/"):
                    return JsonResponse({"detail": message}, status=403)
                return redirect("two-factor")
        return self.get_response(request)


def _enrolment_paths() -> set[str]:
    return {reverse(name) for name in ENROLMENT_URL_NAMES}
