"""Drift checks: a server's live release compared with the manifest Slipway deployed there.

``drift_check_create`` records a queued DriftCheck (one active per server: a partial unique
constraint) and its ``run_drift_check`` message through the outbox; the task calls
``drift_check_run``, which claims the row with a conditional UPDATE (queued → running), runs
the engine's check (``builds.engine.drift.check_release`` over SSH, ``s3.drift`` for a
bucket), and records the outcome. A drift not seen before on that server (its fingerprint
differs from the last conclusive check's) records ``drift`` notifications in the same
transaction (builds.notifications.drift_event): a drift that stays is reported once.

``drift_checks_tick`` (celery beat's ``tick-drift-checks``, or the embedded loop) queues a
scheduled check of every server whose project asks for one every ``drift_check_hours`` and
whose last check is older than that. See docs/drift.md.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Max, Q
from django.utils import timezone

from builds import notifications
from builds.engine import drift, s3
from builds.engine.build import rules_for_generated
from builds.engine.errors import EngineError, InvalidInput
from builds.engine.manifest import Manifest, display_path, is_generated
from builds.engine.masking import Masker
from builds.engine.ssh import connect
from builds.models import (
    DRIFT_ACTIVE,
    DRIFT_CONCLUSIVE,
    DriftCheck,
    DriftStatus,
    DriftTrigger,
)
from builds.runner import endpoint_for, s3_endpoint_for
from deployer import outbox
from projects.secrets import project_secrets
from servers.models import Protocol, Server

logger = logging.getLogger(__name__)

RUN_DRIFT_CHECK_TASK = "builds.tasks.run_drift_check"
#: Drifted paths a check keeps (the counts are of all of them).
DRIFT_FILES_KEPT = 500
#: A check running longer than this is taken for one whose worker died: failed, so that the
#: server can be checked again. Above the engine's own time limit.
STALE_AFTER = timedelta(seconds=drift.DEFAULT_TIMEOUT_SECONDS + 600)
#: Scheduled checks queued by one tick at most (the rest wait for the next tick).
TICK_BATCH = 50


def drift_unsupported(server: Server) -> str | None:
    """Why ``server`` cannot be checked for drift, in words; None when it can: an SSH server
    deploying releases (atomic) or an S3 bucket."""
    if server.is_s3:
        return None
    if server.is_ftp:
        return "FTP servers are not checked for drift (a deployment there still restores it)"
    if server.protocol != Protocol.SSH or not server.atomic:
        return "only SSH servers that deploy releases (atomic) and S3 buckets are checked for drift"
    return None


def drift_check_create(
    *, server: Server, actor: User | None, trigger: str = DriftTrigger.MANUAL
) -> DriftCheck:
    """Queue a check of ``server``; the check already queued or running there, if any.

    Raises InvalidInput("server") for a server that cannot be checked (``drift_unsupported``)
    or that has no live release made by Slipway (nothing to compare with)."""
    problem = drift_unsupported(server)
    if problem:
        raise InvalidInput("server", f"{server.name}: {problem}.")
    live = server.live_release()
    if live is None or not live.manifest:
        raise InvalidInput(
            "server", f"{server.name} has no live release made by Slipway to compare with."
        )
    _fail_stale(server)
    with transaction.atomic():
        active = server.drift_checks.filter(status__in=DRIFT_ACTIVE).first()
        if active is not None:
            return active
        try:
            with transaction.atomic():
                check = DriftCheck.objects.create(
                    server=server,
                    release=live,
                    release_name=live.name,
                    trigger=trigger,
                    requested_by=actor,
                )
        except IntegrityError:
            # Another request (or the tick) queued one first: that one answers.
            return server.drift_checks.get(status__in=DRIFT_ACTIVE)
        outbox.enqueue(RUN_DRIFT_CHECK_TASK, check.pk)
    return check


def _fail_stale(server: Server) -> None:
    DriftCheck.objects.filter(
        server=server,
        status=DriftStatus.RUNNING,
        started_at__lt=timezone.now() - STALE_AFTER,
    ).update(
        status=DriftStatus.FAILED,
        error="The worker running this check stopped before it finished.",
        error_code="worker_lost",
        finished_at=timezone.now(),
    )


def drift_check_run(check_id: int) -> DriftCheck | None:
    """Claim the queued check ``check_id`` and run it; None when it was not queued (any
    more: a redelivered message, another worker). Never raises for a problem on the
    server's side: the check is then recorded failed, with the error in words."""
    now = timezone.now()
    if not DriftCheck.objects.filter(pk=check_id, status=DriftStatus.QUEUED).update(
        status=DriftStatus.RUNNING, started_at=now
    ):
        return None
    check = DriftCheck.objects.select_related("server__project", "release").get(pk=check_id)
    server = check.server
    mask = Masker(project_secrets(server.project, [server]))
    try:
        report = _report(check)
    except EngineError as error:
        message = str(error) if error.user_facing else "Slipway could not check this server."
        if not error.user_facing:
            logger.error("Drift check %s failed", check.pk, exc_info=error)
        _finish_failed(check, mask(message), error.code)
    except Exception:
        logger.exception("Drift check %s failed", check.pk)
        _finish_failed(check, "Slipway could not check this server.", "internal")
    else:
        _finish(check, report)
    check.refresh_from_db()
    return check


def _report(check: DriftCheck) -> drift.DriftReport:
    server = check.server
    release = check.release
    if release is None or not release.manifest:
        raise InvalidInput("release", "the release this check was for is no longer recorded")
    manifest = Manifest.from_document(release.manifest)
    generated = rules_for_generated(server.project.generated_paths)
    if server.is_s3:
        report = s3.drift(s3_endpoint_for(server), release=release.name, manifest=manifest)
        return drift.DriftReport(
            release=report.release,
            checked=report.checked,
            files=tuple(item for item in report.files if not is_generated(item.path, generated)),
        )
    with connect(endpoint_for(server)) as connection:
        return drift.check_release(
            connection,
            server.deploy_path,
            manifest,
            release=release.name,
            generated=generated,
        )


def fingerprint(report: drift.DriftReport) -> str:
    """SHA-256 of the drifted paths and how each changed (sorted): "" when clean. Two checks
    with the same fingerprint found the same drift."""
    if report.clean:
        return ""
    digest = hashlib.sha256()
    for item in sorted(report.files, key=lambda item: (item.path, item.change)):
        digest.update(f"{item.change}\0{item.path}\0".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _file_json(item: drift.DriftedFile) -> dict[str, object]:
    return {
        "path": display_path(item.path),
        "change": item.change,
        "size": item.size,
        "mtime": (
            datetime.fromtimestamp(item.mtime, tz=UTC).isoformat()
            if item.mtime is not None
            else None
        ),
    }


def _finish(check: DriftCheck, report: drift.DriftReport) -> None:
    found = fingerprint(report)
    status = DriftStatus.CLEAN if report.clean else DriftStatus.DRIFTED
    with transaction.atomic():
        previous = (
            DriftCheck.objects.filter(server_id=check.server_id, status__in=DRIFT_CONCLUSIVE)
            .exclude(pk=check.pk)
            .order_by("-finished_at", "-pk")
            .first()
        )
        new_drift = status == DriftStatus.DRIFTED and (
            previous is None or previous.fingerprint != found
        )
        if not DriftCheck.objects.filter(pk=check.pk, status=DriftStatus.RUNNING).update(
            status=status,
            checked_count=report.checked,
            added_count=len(report.of(drift.ADDED)),
            changed_count=len(report.of(drift.CHANGED)),
            removed_count=len(report.of(drift.REMOVED)),
            files=[_file_json(item) for item in report.files[:DRIFT_FILES_KEPT]],
            fingerprint=found,
            notified=new_drift,
            finished_at=timezone.now(),
        ):
            return  # failed as stale meanwhile: that outcome stands
        if new_drift:
            check.refresh_from_db()
            notifications.drift_event(check)


def _finish_failed(check: DriftCheck, error: str, code: str) -> None:
    DriftCheck.objects.filter(pk=check.pk, status=DriftStatus.RUNNING).update(
        status=DriftStatus.FAILED, error=error, error_code=code, finished_at=timezone.now()
    )


def drift_checks_tick(*, now: datetime | None = None) -> list[DriftCheck]:
    """Queue a scheduled check of every enabled server whose project checks every
    ``drift_check_hours`` (> 0), that has a live release and can be checked, and whose last
    check started longer ago than that (or never). Safe to run in any number of processes:
    the one-active-check constraint keeps it to one check per server."""
    now = now or timezone.now()
    candidates = (
        Server.objects.filter(
            Q(protocol=Protocol.S3) | Q(protocol=Protocol.SSH, atomic=True),
            enabled=True,
            project__drift_check_hours__gt=0,
            releases__live=True,
        )
        .select_related("project")
        .annotate(last_check=Max("drift_checks__created_at"))
        .exclude(drift_checks__status__in=DRIFT_ACTIVE)
        .order_by("last_check", "pk")
    )
    queued: list[DriftCheck] = []
    for server in candidates.distinct()[: TICK_BATCH * 4]:
        if len(queued) >= TICK_BATCH:
            break
        due_after = now - timedelta(hours=server.project.drift_check_hours)
        if server.last_check is not None and server.last_check > due_after:
            continue
        if drift_unsupported(server) is not None:
            continue
        try:
            check = drift_check_create(server=server, actor=None, trigger=DriftTrigger.SCHEDULED)
        except InvalidInput:
            continue
        queued.append(check)
    return queued


def drift_last(server: Server) -> DriftCheck | None:
    """The server's newest check (any status), for its page and the API."""
    return server.drift_checks.select_related("requested_by").first()
