"""`Authorization: Bearer <token>` for the API."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from projects.models import ApiToken, hash_token


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
        if record is None or not record.user.is_active:
            raise exceptions.AuthenticationFailed("Authorization: the token is unknown or revoked")
        ApiToken.objects.filter(pk=record.pk).update(last_used_at=timezone.now())
        return record.user, record

    def authenticate_header(self, request: Request) -> str:
        return self.keyword
