"""The dashboard's pages for the browser tests: a project with history to show (``HISTORY``,
run in `manage.py shell`, prints the ids it made) and every main page's path."""

from __future__ import annotations

from typing import Any

HISTORY = """
import json
from django.contrib.auth.models import User
from django.utils import timezone
from builds.models import Deployment, DeploymentTarget, LogLine, Status, TargetStatus
from projects.models import Command
from projects.services import project_create
from servers.models import Release, Server, ServerGroup
admin = User.objects.get(username='admin')
project = project_create(owner=admin, name='Guarded', repository_url='https://git.example.com/g.git')
server = Server.objects.create(project=project, name='web1', hostname='web1.example.com',
    username='deploy', deploy_path='/srv/guarded', environment='production',
    host_key_fingerprint='SHA256:' + 'k' * 43)
now = timezone.now()
done = Deployment.objects.create(project=project, status=Status.SUCCEEDED, triggered_by=admin,
    end_revision='1' * 40, started_at=now, finished_at=now)
DeploymentTarget.objects.create(deployment=done, server=server, status=TargetStatus.SUCCEEDED,
    release='20261120-000000000-1111111')
Release.objects.create(server=server, name='20261120-000000000-1111111', revision='1' * 40,
    deployment=done, live=True)
running = Deployment.objects.create(project=project, status=Status.RUNNING, triggered_by=admin,
    started_at=now, heartbeat_at=now, log_seq=2)
DeploymentTarget.objects.create(deployment=running, server=server, status=TargetStatus.RUNNING,
    files_total=10, files_done=4)
LogLine.objects.create(deployment=running, seq=1, text='\\x1b[32mcompiling\\x1b[0m')
LogLine.objects.create(deployment=running, seq=2, text='uploading')
command = Command.objects.create(project=project, command='php artisan migrate')
group = ServerGroup.objects.create(project=project, name='all')
print(json.dumps({'slug': project.slug, 'server': server.pk, 'done': done.pk,
    'running': running.pk, 'command': command.pk, 'group': group.pk}))
"""

SETTING_KINDS = (
    "commands",
    "config-files",
    "excluded-files",
    "environment",
    "build-commands",
    "groups",
    "health-checks",
    "notifications",
)


def main_pages(made: dict[str, Any]) -> list[str]:
    """Every main page of the dashboard (signed in as the site admin), for what ``HISTORY``
    printed."""
    slug, server = made["slug"], made["server"]
    return [
        "/",
        "/projects/new/",
        f"/projects/{slug}/",
        f"/projects/{slug}/deployments/",
        f"/projects/{slug}/deployments/{made['done']}/",
        f"/projects/{slug}/deploy/",
        f"/projects/{slug}/settings/",
        f"/projects/{slug}/members/",
        f"/projects/{slug}/audit/",
        f"/projects/{slug}/servers/new/",
        f"/projects/{slug}/servers/{server}/",
        f"/projects/{slug}/servers/{server}/edit/",
        f"/projects/{slug}/settings/commands/{made['command']}/",
        f"/projects/{slug}/settings/groups/{made['group']}/",
        *[f"/projects/{slug}/settings/{kind}/" for kind in SETTING_KINDS],
        "/account/tokens/",
        "/account/password/",
    ]
