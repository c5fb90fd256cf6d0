"""`Authorization: Bearer <token>` for the API.

The token authenticates its user; what it may do is then narrowed by its scope in
deployer.api (the access helpers), never widened beyond the user's role on the project.
"""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from projects.models import ApiToken, TokenScope, hash_token


class BearerTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, ApiToken] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != self.keyword.lower():
            return None
        token = token.strip()
        if not token:
            raise exceptions.AuthenticationFailed("Authorization: the Bearer token is empty")
        # Looked up by its hash: the stored value never equals the secret, and the index
        # lookup does not compare the secret byte by byte.
        record = (
            ApiToken.objects.active()
            .select_related("user")
            .filter(token_hash=hash_token(token))
            .first()
        )
        if record is None:
            raise exceptions.AuthenticationFailed("Authorization: the token is unknown or revoked")
        if not record.user.is_active:
            raise exceptions.AuthenticationFailed(
                "Authorization: the token's user is deactivated; ask a site admin."
            )
        now = timezone.now()
        if record.expired(now):
            assert record.expires_at is not None
            raise exceptions.AuthenticationFailed(
                f"Authorization: the token {record.prefix}… expired at "
                f"{record.expires_at.isoformat(timespec='seconds')}; issue a new one on "
                "the dashboard's API tokens page."
            )
        ApiToken.objects.filter(pk=record.pk).update(last_used_at=now)
        return record.user, record

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class TokenScopePermission(BasePermission):
    """A read-scoped token changes nothing, whatever view it reaches: a net under the access
    helpers (deployer.api), which narrow every scope by what the view needs."""

    message = "This API token has scope read; it may only look (GET, HEAD, OPTIONS)."

    def has_permission(self, request: Request, view: object) -> bool:
        token = request.auth
        if isinstance(token, ApiToken) and token.scope == TokenScope.READ:
            return request.method in SAFE_METHODS
        return True
