"""Account pages: signing in (password, then a code when the user has an authenticator),
invitations, two-factor set-up, and the site admins' Users page with the site settings.

Each view parses, authorises (projects.dashboard.get_site_admin for the Users page), calls a
service of projects.accounts and renders.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login as auth_login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse_lazy
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST
from django_otp import login as otp_login

from projects.accounts import (
    PENDING_SECONDS,
    PENDING_SINCE_KEY,
    PENDING_USER_KEY,
    Invitation,
    account_events,
    has_two_factor,
    invitation_tokens,
    recovery_codes_left,
    recovery_codes_renew,
    site_settings_update,
    totp_enrolment,
    totp_qr_data_uri,
    totp_secret,
    two_factor_disable,
    two_factor_enable,
    two_factor_reset,
    user_create,
    user_deactivate,
    user_invite,
    user_reactivate,
    user_set_site_admin,
    users_with_two_factor,
    verify_code,
)
from projects.dashboard import (
    SERVICE_ERRORS,
    add_service_error,
    error_message,
    get_site_admin,
    get_user_for_site_admin,
)
from projects.forms import OneTimeCodeForm, SiteSettingsForm, TwoFactorDisableForm, UserCreateForm
from projects.models import SiteSettings

RECENT_EVENTS = 20
PENDING_NEXT_KEY = "slipway_two_factor_next"
PENDING_BACKEND_KEY = "slipway_two_factor_backend"


def _user(request: HttpRequest) -> User:
    user = request.user
    assert isinstance(user, User)  # login_required let only a signed-in user through
    return user


# --------------------------------------------------------------------------- signing in


class SignInView(auth_views.LoginView):
    """Django's sign-in page; a user with an authenticator is not signed in yet but asked
    for a code on the next page (``sign_in_code``)."""

    def form_valid(self, form: AuthenticationForm) -> HttpResponse:
        user = form.get_user()
        if not has_two_factor(user):
            return super().form_valid(form)
        session = self.request.session
        session.cycle_key()
        session[PENDING_USER_KEY] = user.pk
        session[PENDING_SINCE_KEY] = time.time()
        session[PENDING_BACKEND_KEY] = getattr(
            user, "backend", settings.AUTHENTICATION_BACKENDS[-1]
        )
        session[PENDING_NEXT_KEY] = self.get_success_url()
        return redirect("login-code")


def _pending_user(request: HttpRequest) -> User | None:
    session = request.session
    since = session.get(PENDING_SINCE_KEY)
    if since is None or time.time() - float(since) > PENDING_SECONDS:
        return None
    pk = session.get(PENDING_USER_KEY)
    if not isinstance(pk, int):
        return None
    return User.objects.filter(pk=pk, is_active=True).first()


def _end_pending(request: HttpRequest) -> tuple[str, str]:
    session = request.session
    for key in (PENDING_USER_KEY, PENDING_SINCE_KEY):
        session.pop(key, None)
    backend = session.pop(PENDING_BACKEND_KEY, settings.AUTHENTICATION_BACKENDS[-1])
    following = session.pop(PENDING_NEXT_KEY, "")
    safe = url_has_allowed_host_and_scheme(
        following, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return backend, following if safe else settings.LOGIN_REDIRECT_URL


@never_cache
@sensitive_post_parameters("code")
@require_http_methods(["GET", "POST"])
def sign_in_code(request: HttpRequest) -> HttpResponse:
    user = _pending_user(request)
    if user is None:
        messages.info(request, "Sign in with your password first (a sign-in waits 5 minutes).")
        return redirect("login")
    form = OneTimeCodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        device = verify_code(user, form.cleaned_data["code"])
        if device is None:
            form.add_error(
                "code",
                "This code is not right, was used already, or came too soon after a wrong "
                "one: wait for the next code and try again.",
            )
        else:
            backend, following = _end_pending(request)
            auth_login(request, user, backend=backend)
            otp_login(request, device)
            return HttpResponseRedirect(following)
    return render(request, "registration/login_code.html", {"form": form})


class InvitationView(auth_views.PasswordResetConfirmView):
    """An invitee chooses their password (Django's own set-password form and validators);
    the link then stops working, because the token hashes the password."""

    token_generator = invitation_tokens
    template_name = "registration/invitation.html"
    success_url = reverse_lazy("login")
    reset_url_token = "set-password"  # noqa: S105 (a URL segment, not a secret)

    def form_valid(self, form: Any) -> HttpResponse:
        response = super().form_valid(form)
        messages.success(self.request, "Your password is set: sign in with it.")
        return response


# --------------------------------------------------------------------------- two-factor set-up


@never_cache
@login_required
@sensitive_post_parameters("code", "password")
@require_http_methods(["GET", "POST"])
def two_factor(request: HttpRequest) -> HttpResponse:
    """Set up an authenticator app, or see, renew and turn off two-factor sign-in."""
    user = _user(request)
    enabled = has_two_factor(user)
    code_form = OneTimeCodeForm(request.POST if request.POST.get("action") == "enable" else None)
    disable_form = TwoFactorDisableForm(
        request.POST if request.POST.get("action") == "disable" else None
    )
    codes: list[str] = []
    action = request.POST.get("action") if request.method == "POST" else None
    if action == "enable" and not enabled and code_form.is_valid():
        device = totp_enrolment(user)
        try:
            codes = two_factor_enable(user=user, device=device, code=code_form.cleaned_data["code"])
        except SERVICE_ERRORS as exc:
            add_service_error(code_form, exc)
        else:
            device.refresh_from_db()
            otp_login(request, device)
            enabled = True
    elif action == "renew" and enabled:
        codes = recovery_codes_renew(user=user)
    elif action == "disable" and enabled and disable_form.is_valid():
        try:
            two_factor_disable(user=user, **disable_form.cleaned_data)
        except SERVICE_ERRORS as exc:
            add_service_error(disable_form, exc)
        else:
            messages.success(request, "Two-factor sign-in is off.")
            return redirect("two-factor")
    if codes:
        # Rendered, not redirected: this answer is the only place the codes ever appear.
        return render(request, "account/recovery_codes.html", {"codes": codes})
    context: dict[str, Any] = {
        "enabled": enabled,
        "required": SiteSettings.load().require_two_factor,
        "code_form": code_form,
        "disable_form": disable_form,
    }
    if enabled:
        context["recovery_left"] = recovery_codes_left(user)
    else:
        device = totp_enrolment(user)
        context["qr"] = totp_qr_data_uri(device)
        context["secret"] = totp_secret(device)
    return render(request, "account/two_factor.html", context)


# --------------------------------------------------------------------------- users


@never_cache
@login_required
@sensitive_post_parameters("password1", "password2")
@require_http_methods(["GET", "POST"])
def users(request: HttpRequest) -> HttpResponse:
    """The site admins' page: every user, a form to add one, and the site settings."""
    admin = get_site_admin(request)
    site = SiteSettings.load()
    action = request.POST.get("action") if request.method == "POST" else None
    create_form = UserCreateForm(request.POST if action == "create" else None)
    settings_form = SiteSettingsForm(request.POST if action == "settings" else None, instance=site)
    invitation: Invitation | None = None
    invited: User | None = None
    if action == "create" and create_form.is_valid():
        try:
            invited = user_create(actor=admin, **create_form.service_data())
        except SERVICE_ERRORS as exc:
            add_service_error(create_form, exc)
        else:
            if invited.has_usable_password():
                messages.success(request, f"{invited.username} can sign in now.")
                return redirect("users")
            invitation = user_invite(actor=admin, user=invited)
            create_form = UserCreateForm()
    elif action == "settings" and settings_form.is_valid():
        site_settings_update(actor=admin, **settings_form.cleaned_data)
        messages.success(request, "The site settings are saved.")
        return redirect("users")
    return _users_page(
        request,
        create_form=create_form,
        settings_form=settings_form,
        invitation=invitation,
        invited=invited,
    )


def _users_page(
    request: HttpRequest,
    *,
    create_form: UserCreateForm | None = None,
    settings_form: SiteSettingsForm | None = None,
    invitation: Invitation | None = None,
    invited: User | None = None,
) -> HttpResponse:
    with_two_factor = users_with_two_factor()
    rows = [
        {
            "user": person,
            "two_factor": person.pk in with_two_factor,
            "invited": not person.has_usable_password(),
        }
        for person in User.objects.order_by("-is_active", "username")
    ]
    return render(
        request,
        "account/users.html",
        {
            "rows": rows,
            "create_form": create_form or UserCreateForm(),
            "settings_form": settings_form or SiteSettingsForm(instance=SiteSettings.load()),
            "invitation": invitation,
            "invited": invited,
            "events": account_events(RECENT_EVENTS),
        },
    )


_USER_ACTIONS = (
    "deactivate",
    "reactivate",
    "make-admin",
    "revoke-admin",
    "invite",
    "reset-two-factor",
)


@never_cache
@login_required
@require_POST
def user_action(request: HttpRequest, username: str, action: str) -> HttpResponse:
    """One change to one user, from a button on the Users page."""
    person, admin = get_user_for_site_admin(request, username)
    if action not in _USER_ACTIONS:
        messages.error(request, f"There is no action {action!r}.")
        return redirect("users")
    try:
        if action == "invite":
            invitation = user_invite(actor=admin, user=person)
            # Rendered, not redirected: the link is shown once, like a new token.
            return _users_page(request, invitation=invitation, invited=person)
        if action == "deactivate":
            user_deactivate(actor=admin, user=person)
            done = f"{person.username} is deactivated and signed out everywhere."
        elif action == "reset-two-factor":
            two_factor_reset(actor=admin, user=person)
            done = (
                f"{person.username} signs in with the password alone until they set up a new app."
            )
        elif action == "reactivate":
            user_reactivate(actor=admin, user=person)
            done = f"{person.username} can sign in again."
        else:
            grant = action == "make-admin"
            user_set_site_admin(actor=admin, user=person, site_admin=grant)
            done = f"{person.username} is {'now' if grant else 'no longer'} a site admin."
    except SERVICE_ERRORS as exc:
        messages.error(request, error_message(exc))
    else:
        messages.success(request, done)
    return redirect("users")
