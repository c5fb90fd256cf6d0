"""Plain dictionaries describing a deployment's state, shared by the API, pages and sockets,
and the metrics' chart data."""

from __future__ import annotations

from builds.dora import DoraReport
from builds.models import Deployment


def deployment_status(deployment: Deployment) -> dict[str, object]:
    return {
        "id": deployment.pk,
        "status": deployment.status,
        "stage": deployment.stage,
        "error": deployment.error,
        "started_at": deployment.started_at.isoformat() if deployment.started_at else None,
        "finished_at": deployment.finished_at.isoformat() if deployment.finished_at else None,
        "targets": [
            {
                "server": target.server_id,
                "status": target.status,
                "release": target.release,
                "reason": target.reason,
                "files_done": target.files_done,
                "files_total": target.files_total,
                "bytes_done": target.bytes_done,
                "bytes_total": target.bytes_total,
            }
            for target in deployment.targets.all()
        ],
    }


def dora_chart_data(report: DoraReport) -> dict[str, object]:
    """What static/js/metrics.js draws, per UTC day of the report: deployments by outcome,
    the failure rate (percent), median lead time (hours) and duration (minutes); null where a
    day has none. Given to the page in a json_script block (data, not code: the CSP)."""

    def rounded(value: float | None, unit: float) -> float | None:
        return None if value is None else round(value / unit, 2)

    days = report.per_day
    return {
        "labels": [day.day.isoformat() for day in days],
        "live": [day.live for day in days],
        "live_then_failed": [day.live_then_failed for day in days],
        "failed": [day.failed for day in days],
        "rollbacks": [day.rollbacks for day in days],
        "failure_rate": [rounded(day.change_failure_rate, 0.01) for day in days],
        "lead_time_hours": [rounded(day.lead_time_seconds, 3600) for day in days],
        "duration_minutes": [rounded(day.duration_seconds, 60) for day in days],
    }
