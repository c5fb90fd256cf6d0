"""`manage.py prune`: remove what the retention settings say is old (docs/operations.md)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from builds.retention import records_prune


class Command(BaseCommand):
    help = (
        "Remove old log lines, deliveries, deployments and removed releases' manifests, as the "
        "SLIPWAY_RETAIN_* settings say (celery beat does it every hour). --dry-run only counts."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="print what would be removed; remove nothing"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        report = records_prune(dry_run=options["dry_run"])
        for line in report.lines():
            self.stdout.write(line)
