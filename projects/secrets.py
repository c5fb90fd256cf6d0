"""A project's stored secrets, the one list that every place masking them uses: the
deployment log (builds/runner.py), the notifications and the integrations' reports
(builds/notifications.py)."""

from __future__ import annotations

from builds.engine.masking import config_file_secrets, url_secrets, webhook_url_secrets
from projects.models import Project
from servers.models import Server


def project_secrets(project: Project, servers: list[Server]) -> list[str]:
    """Every stored secret of the project that could show up in a deployment's output.

    Shapes: a list of texts, each masked as a whole, line by line and in base64 (masking.py).
    Every server of the project counts, not only ``servers``: a command may print another
    server's password. Config files count whole (masking.config_file_secrets): members who
    may not configure the project may not read them, yet may read the log.
    """
    values = [project.private_key, project.repository_token, project.webhook_secret]
    values += url_secrets(project.repository_url)
    values += [variable.value for variable in project.environment_variables.filter(secret=True)]
    for body in project.config_files.values_list("body", flat=True):
        values += config_file_secrets(body)
    for notification in project.notifications.all():
        values += [notification.secret]
        values += webhook_url_secrets(notification.url) if notification.url else []
    values += [integration.token for integration in project.integrations.all()]
    for server in {*servers, *project.servers.all()}:
        values += [server.password, server.private_key, server.jump_private_key]
        # An S3 bucket's keys: the secret signs requests, the key id names the account.
        values += [server.s3_secret_access_key, server.s3_access_key_id]
    return [value for value in values if value]
