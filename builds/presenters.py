"""Plain dictionaries describing a deployment's state, shared by the API, pages and sockets."""

from __future__ import annotations

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
