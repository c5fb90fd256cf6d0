"""Print a new API token for a user."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_datetime

from builds.engine.errors import InvalidInput
from projects.models import TokenScope
from projects.services import api_token_issue, token_expiry


class Command(BaseCommand):
    help = "Issue an API token for USERNAME and print it (it is stored hashed, shown only now)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="command line")
        parser.add_argument(
            "--scope",
            choices=TokenScope.values,
            default=TokenScope.ADMIN,
            help="read, deploy or admin (default: admin, all the user's roles allow)",
        )
        parser.add_argument(
            "--expires-in-days", type=int, default=None, help="expire after this many days"
        )
        parser.add_argument(
            "--expires-at", default=None, help="or expire then (ISO 8601; UTC unless it says)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"No user named {options['username']!r}")
        at = None
        if options["expires_at"]:
            at = parse_datetime(options["expires_at"])
            if at is None:
                raise CommandError(
                    f"--expires-at {options['expires_at']!r} is not a date and time "
                    "(2027-01-31T18:00:00Z)"
                )
        try:
            expires_at = token_expiry(days=options["expires_in_days"], at=at)
        except InvalidInput as exc:
            option = "--" + exc.field.replace("_", "-")
            raise CommandError(f"{option}: {str(exc).removeprefix(exc.field + ': ')}") from None
        _, token = api_token_issue(
            user=user, name=options["name"], scope=options["scope"], expires_at=expires_at
        )
        self.stdout.write(token)
