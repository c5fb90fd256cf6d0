"""Django's admin site behind Slipway's own sign-in.

The stock admin has its own password-only login form, which would skip the lockout page and
two-factor sign-in; here it sends people to Slipway's sign-in page instead. A signed-in
user with an authenticator must also have given a code in this session (the two-factor
middleware already enforces that for every page; this keeps the admin safe on its own).
"""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth.models import User
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse

from projects.accounts import has_two_factor, must_enrol, session_verified


class SlipwayAdminSite(admin.AdminSite):
    site_header = "Slipway administration"
    site_title = "Slipway administration"

    def has_permission(self, request: HttpRequest) -> bool:
        if not super().has_permission(request):
            return False
        user = request.user
        if not isinstance(user, User) or must_enrol(user):
            return False
        return not has_two_factor(user) or session_verified(user)

    def login(
        self, request: HttpRequest, extra_context: dict[str, object] | None = None
    ) -> HttpResponse:
        return redirect_to_login(request.GET.get("next") or request.get_full_path())
