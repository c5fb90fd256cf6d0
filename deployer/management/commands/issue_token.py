"""Print a new API token for a user."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from projects.services import api_token_issue


class Command(BaseCommand):
    help = "Issue an API token for USERNAME and print it (it is stored hashed, shown only now)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="command line")

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"No user named {options['username']!r}")
        _, token = api_token_issue(user=user, name=options["name"])
        self.stdout.write(token)
