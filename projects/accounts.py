"""Account services: site settings, the users a site admin manages, invitations and
two-factor sign-in. The dashboard's Users and two-factor pages (projects/account_views.py)
call these; the rules live here once.

Site admins are Django superusers (``projects.models.is_site_admin``). Every change is
recorded in the audit log without a project (``audit_record``), never with a secret.
"""

from __future__ import annotations

import base64
import io
import logging
import smtplib
from dataclasses import dataclass

import qrcode
import qrcode.image.svg
from django.conf import settings
from django.contrib.auth.models import User
from django.contrib.auth.tokens import PasswordResetTokenGenerator
from django.contrib.sessions.models import Session
from django.core.exceptions import ValidationError
from django.core.mail import EmailMessage
from django.db import transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode
from django_otp import devices_for_user, user_has_device
from django_otp import verify_token as otp_verify_token
from django_otp.models import Device
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from builds.engine.errors import InvalidInput
from deployer.links import absolute
from projects.models import AuditEvent, ProjectCreators, SiteSettings
from projects.services import audit_record, close_user_sockets

logger = logging.getLogger(__name__)

RECOVERY_CODES = 10
TOTP_DEVICE_NAME = "Authenticator app"
RECOVERY_DEVICE_NAME = "Recovery codes"


# --------------------------------------------------------------------------- site settings


def site_settings_update(
    *, actor: User, project_creators: str, require_two_factor: bool
) -> SiteSettings:
    """Change the site settings; records the fields that changed. InvalidInput on a bad value."""
    if project_creators not in ProjectCreators.values:
        raise InvalidInput(
            "project_creators", f"must be one of {', '.join(ProjectCreators.values)}."
        )
    with transaction.atomic():
        current = SiteSettings.objects.select_for_update().get(pk=SiteSettings.load().pk)
        changed = {
            name: value
            for name, value in (
                ("project_creators", project_creators),
                ("require_two_factor", require_two_factor),
            )
            if getattr(current, name) != value
        }
        for name, value in changed.items():
            setattr(current, name, value)
        if changed:
            current.save()
            audit_record(
                project=None,
                actor=actor,
                action="site.settings_updated",
                target="site settings",
                **changed,
            )
    return current


# --------------------------------------------------------------------------- users


class InvitationTokenGenerator(PasswordResetTokenGenerator):
    """Signed, expiring (settings.PASSWORD_RESET_TIMEOUT) and one-time: the token hashes the
    user's password, so it stops working once the invitee has set one. Its own salt keeps
    invitations and any password-reset tokens apart."""

    key_salt = "slipway.accounts.InvitationTokenGenerator"


invitation_tokens = InvitationTokenGenerator()


@dataclass(frozen=True)
class Invitation:
    link: str
    # Whether the link also went out by email (SLIPWAY_SMTP_URL set and the user has an address).
    emailed: bool
    # Why it did not, in words safe to show ("" when it did).
    email_problem: str


def user_create(*, actor: User, username: str, email: str, password: str | None) -> User:
    """Create an active user who is no site admin. ``password`` None makes an account that
    can only be entered through an invitation (``user_invite``). The caller (a form built on
    Django's user-creation form) has already validated the username and the password."""
    with transaction.atomic():
        if User.objects.filter(username__iexact=username).exists():
            raise InvalidInput("username", f"{username} is taken.")
        user = User.objects.create_user(username=username, email=email, password=password)
        audit_record(
            project=None,
            actor=actor,
            action="user.created",
            target=username,
            invited=password is None,
        )
    return user


def invitation_link(user: User) -> str:
    """The absolute address where ``user`` sets their password (one use, expiring)."""
    path = reverse(
        "invitation",
        kwargs={
            "uidb64": urlsafe_base64_encode(force_bytes(user.pk)),
            "token": invitation_tokens.make_token(user),
        },
    )
    return absolute(path)


def user_invite(*, actor: User, user: User) -> Invitation:
    """A fresh invitation link for a user who has no password yet, emailed when mail is set up.

    Raises ValidationError for a user who already has a password (an invitation would let
    the admin take the account over; the user changes their own password) or is deactivated.
    """
    if not user.is_active:
        raise ValidationError(f"{user.username} is deactivated; reactivate them first.")
    if user.has_usable_password():
        raise ValidationError(f"{user.username} has set a password already; they sign in with it.")
    link = invitation_link(user)
    emailed, problem = _email_invitation(user, link)
    audit_record(
        project=None, actor=actor, action="user.invited", target=user.username, emailed=emailed
    )
    return Invitation(link=link, emailed=emailed, email_problem=problem)


def _email_invitation(user: User, link: str) -> tuple[bool, str]:
    if not settings.SMTP_URL or not settings.EMAIL_FROM:
        return False, "mail is not set up (SLIPWAY_SMTP_URL and SLIPWAY_EMAIL_FROM)"
    if not user.email:
        return False, f"{user.username} has no email address"
    days = settings.PASSWORD_RESET_TIMEOUT // 86400
    message = EmailMessage(
        subject="Your Slipway account",
        body=(
            f"You have an account on Slipway at {settings.BASE_URL}, user name {user.username}.\n"
            f"Choose your password here (the link works once, for {days} days):\n\n{link}\n"
        ),
        from_email=settings.EMAIL_FROM,
        to=[user.email],
    )
    try:
        message.send()
    except (smtplib.SMTPException, OSError) as exc:
        # The link itself is never logged: it is as good as a password until it is used.
        logger.warning("Invitation mail to %s failed: %s", user.username, type(exc).__name__)
        return False, f"the mail server {settings.EMAIL_HOST} failed ({type(exc).__name__})"
    return True, ""


def _lock_active_site_admins() -> list[int]:
    # Locking the admins' rows makes two admins who demote or deactivate each other at once
    # queue up, so the second sees the first's change and is refused.
    return list(
        User.objects.select_for_update()
        .filter(is_active=True, is_superuser=True)
        .values_list("pk", flat=True)
    )


def _ensure_another_site_admin_remains(user: User) -> None:
    if _lock_active_site_admins() == [user.pk]:
        raise ValidationError(
            f"{user.username} is the last active site admin; make another user site admin first."
        )


def end_sessions(user: User) -> int:
    """Delete every session signed in as ``user`` (and any half-finished two-factor sign-in);
    returns how many. Sessions are stored in the database and are read one by one: a site
    has few enough of them."""
    ended = 0
    for session in Session.objects.filter(expire_date__gt=timezone.now()).iterator():
        data = session.get_decoded()
        if str(user.pk) in (str(data.get("_auth_user_id")), str(data.get(PENDING_USER_KEY))):
            session.delete()
            ended += 1
    # Open live-log sockets re-check their session (gone now) and close.
    close_user_sockets(user.pk)
    return ended


def user_deactivate(*, actor: User, user: User) -> None:
    """Deactivate ``user`` at once: the account cannot sign in, its sessions end and its API
    tokens are refused (the token check requires an active user). ValidationError for the
    actor themselves and for the last active site admin."""
    if user.pk == actor.pk:
        raise ValidationError("You cannot deactivate yourself; ask another site admin.")
    with transaction.atomic():
        if user.is_superuser:
            _ensure_another_site_admin_remains(user)
        if not User.objects.filter(pk=user.pk, is_active=True).update(is_active=False):
            return
        user.is_active = False
        ended = end_sessions(user)
        audit_record(
            project=None,
            actor=actor,
            action="user.deactivated",
            target=user.username,
            sessions=ended,
        )


def user_reactivate(*, actor: User, user: User) -> None:
    with transaction.atomic():
        if User.objects.filter(pk=user.pk, is_active=False).update(is_active=True):
            user.is_active = True
            audit_record(project=None, actor=actor, action="user.reactivated", target=user.username)


def user_set_site_admin(*, actor: User, user: User, site_admin: bool) -> None:
    """Make ``user`` a site admin (Django's superuser and staff flags, so /django-admin/ too)
    or take it away; ValidationError when that would leave no active site admin."""
    if site_admin and not user.is_active:
        raise ValidationError(f"{user.username} is deactivated; reactivate them first.")
    with transaction.atomic():
        if not site_admin and user.is_superuser:
            _ensure_another_site_admin_remains(user)
        if user.is_superuser == site_admin and user.is_staff == site_admin:
            return
        User.objects.filter(pk=user.pk).update(is_superuser=site_admin, is_staff=site_admin)
        user.is_superuser = user.is_staff = site_admin
        audit_record(
            project=None,
            actor=actor,
            action="user.site_admin_granted" if site_admin else "user.site_admin_revoked",
            target=user.username,
        )


# --------------------------------------------------------------------------- two-factor sign-in

# The session key of a sign-in whose password was right and whose code is still to come.
PENDING_USER_KEY = "slipway_two_factor_user"
PENDING_SINCE_KEY = "slipway_two_factor_since"
# Seconds a person has between the password and the code.
PENDING_SECONDS = 300


def has_two_factor(user: User) -> bool:
    """Whether ``user`` has a confirmed authenticator (sign-in then asks for a code)."""
    return bool(user_has_device(user, confirmed=True))


def must_enrol(user: User) -> bool:
    """Whether ``user`` must set up two-factor sign-in before doing anything else: the site
    requires it (SiteSettings.require_two_factor) and they have no authenticator yet."""
    return SiteSettings.load().require_two_factor and not has_two_factor(user)


def verify_code(user: User, code: str) -> Device | None:
    """The confirmed device (authenticator or recovery codes) that accepts ``code``, or None.

    Each device throttles wrong codes itself (django-otp's ThrottlingMixin, doubling waits);
    a TOTP code is refused a second time (replay), a recovery code is used up.
    """
    code = "".join(code.split())
    if not code or len(code) > 32:
        return None
    for device in devices_for_user(user, confirmed=True):
        verified = otp_verify_token(user, device.persistent_id, code)
        if verified is not None:
            return verified
    return None


def totp_enrolment(user: User) -> TOTPDevice:
    """The user's authenticator waiting to be confirmed, created with a new secret if none."""
    device = TOTPDevice.objects.filter(user=user, confirmed=False).first()
    if device is None:
        device = TOTPDevice.objects.create(user=user, name=TOTP_DEVICE_NAME, confirmed=False)
    return device


def totp_secret(device: TOTPDevice) -> str:
    """The device's secret in base32, as authenticator apps take it when typed."""
    return base64.b32encode(device.bin_key).decode()


def totp_qr_data_uri(device: TOTPDevice) -> str:
    """The otpauth:// address as an SVG QR code in a data: URI, drawn here (no outside service)."""
    image = qrcode.make(device.config_url, image_factory=qrcode.image.svg.SvgPathImage)
    out = io.BytesIO()
    image.save(out)
    return "data:image/svg+xml;base64," + base64.b64encode(out.getvalue()).decode()


def two_factor_enable(*, user: User, device: TOTPDevice, code: str) -> list[str]:
    """Confirm ``device`` with a code from the app; answers the new recovery codes (shown once).

    Raises InvalidInput("code") when the code is wrong. Any older authenticator and recovery
    codes of the user are replaced.
    """
    with transaction.atomic():
        device = TOTPDevice.objects.select_for_update().get(pk=device.pk, user=user)
        allowed, _ = device.verify_is_allowed()
        if not allowed or not device.verify_token("".join(code.split())):
            raise InvalidInput(
                "code", "is not the one your app shows now; type the current 6 digits."
            )
        TOTPDevice.objects.filter(user=user).exclude(pk=device.pk).delete()
        device.confirmed = True
        device.save(update_fields=["confirmed"])
        codes = _new_recovery_codes(user)
        audit_record(project=None, actor=user, action="two_factor.enabled", target=user.username)
    return codes


def two_factor_reset(*, actor: User, user: User) -> None:
    """A site admin removes ``user``'s authenticator and recovery codes (a lost phone): they
    sign in with their password alone and set up a new app (at once, when the site requires
    it). Their sessions end, so a thief's signed-in browser goes too."""
    with transaction.atomic():
        removed = 0
        for model in (TOTPDevice, StaticDevice):
            removed += model.objects.filter(user=user).delete()[0]
        if removed:
            end_sessions(user)
            audit_record(project=None, actor=actor, action="two_factor.reset", target=user.username)


def recovery_codes_renew(*, user: User) -> list[str]:
    """Replace the user's recovery codes with new ones (shown once)."""
    with transaction.atomic():
        codes = _new_recovery_codes(user)
        audit_record(
            project=None, actor=user, action="two_factor.recovery_renewed", target=user.username
        )
    return codes


def _new_recovery_codes(user: User) -> list[str]:
    StaticDevice.objects.filter(user=user).delete()
    device = StaticDevice.objects.create(user=user, name=RECOVERY_DEVICE_NAME, confirmed=True)
    codes = [StaticToken.random_token() for _ in range(RECOVERY_CODES)]
    StaticToken.objects.bulk_create(StaticToken(device=device, token=code) for code in codes)
    return codes


def recovery_codes_left(user: User) -> int:
    return int(StaticToken.objects.filter(device__user=user, device__confirmed=True).count())


# The audit actions of this module, which the Users page lists.
ACCOUNT_ACTION_PREFIXES = ("user.", "site.", "two_factor.")


def account_events(limit: int) -> list[AuditEvent]:
    """The latest ``limit`` account and site-settings events, newest first."""
    wanted = Q()
    for prefix in ACCOUNT_ACTION_PREFIXES:
        wanted |= Q(action__startswith=prefix)
    return list(
        AuditEvent.objects.filter(wanted, project__isnull=True).select_related("actor")[:limit]
    )


def users_with_two_factor() -> set[int]:
    """Ids of the users who have a confirmed authenticator (for the Users page)."""
    return set(TOTPDevice.objects.filter(confirmed=True).values_list("user_id", flat=True))


def session_verified(user: object) -> bool:
    """Whether this request's user gave a code in this session (django-otp's OTPMiddleware
    puts ``is_verified`` on request.user)."""
    is_verified = getattr(user, "is_verified", None)
    return bool(is_verified is not None and is_verified())


def two_factor_disable(*, user: User, code: str = "", password: str = "") -> None:
    """Remove the user's authenticator and recovery codes, proven by a current code or the
    password. ValidationError when the site requires two-factor sign-in, InvalidInput when
    neither proof is right."""
    if SiteSettings.load().require_two_factor:
        raise ValidationError(
            "This Slipway requires two-factor sign-in; you can set up a new app instead."
        )
    proven = (bool(password) and user.check_password(password)) or (
        bool(code) and verify_code(user, code) is not None
    )
    if not proven:
        raise InvalidInput(
            "code", "or password is not right; give a current code or your password."
        )
    with transaction.atomic():
        for model in (TOTPDevice, StaticDevice):
            model.objects.filter(user=user).delete()
        audit_record(project=None, actor=user, action="two_factor.disabled", target=user.username)
