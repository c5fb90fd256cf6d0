"""Through the database and the Celery task: shared paths seeded from the repository, the
deployment's own output not taken for drift, private config files, and the exclude report."""

from __future__ import annotations

import stat

import pytest
from django.urls import reverse

from builds import services
from builds.models import Deployment, Kind, LogLine, Status
from builds.tasks import run_deployment
from projects.models import Command, ConfigFile, ExcludedFile

pytestmark = pytest.mark.django_db(transaction=True)


def _run(deployment: Deployment) -> Deployment:
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    return deployment


def _log(deployment: Deployment) -> str:
    return "\n".join(LogLine.objects.filter(deployment=deployment).values_list("text", flat=True))


def test_a_django_project_keeps_its_shared_seed_its_bytecode_and_its_secret_private(
    git_repo_factory, sshd_target, project_factory, server_factory, alice, client
):
    repo = git_repo_factory()
    repo.commit(
        {
            "manage.py": "print('manage')\n",
            "shop/views.py": "def index(request):\n    return 'hello'\n",
            "storage/seed.txt": "seed from git\n",
            "config/app.ini": "[app]\nname = shop\n",
            "staticfiles/committed.css": "body {}\n",
            "vendor/django/contrib/staticfiles/finders.py": "def find(path):\n    return path\n",
        },
        "A",
    )
    project = project_factory(
        repo, shared_paths=["storage/", "config/app.ini"], generated_paths=["**/__pycache__/"]
    )
    server = server_factory(project, sshd_target)
    ExcludedFile.objects.create(project=project, pattern="staticfiles/")
    ConfigFile.objects.create(project=project, path=".env", body="SECRET_KEY=s3cret\n")
    Command.objects.create(
        project=project,
        stage="after_switch",
        command="python3 -m compileall -q . && mkdir -p var/cache && date +%s%N > var/cache/stamp",
    )

    preview = _run(services.deployment_create(project=project, servers=[server], kind=Kind.PREVIEW))
    assert preview.status == Status.SUCCEEDED, preview.error
    (excluded,) = preview.changes["excluded"]
    assert excluded["pattern"] == "staticfiles/" and excluded["count"] == 2
    assert excluded["examples"] == ["staticfiles/", "vendor/django/contrib/staticfiles/"]
    client.force_login(alice)
    page = client.get(reverse("deployment-preview", args=[project.slug, preview.pk]))
    assert page.status_code == 200
    assert "Left out by exclude patterns" in page.text
    assert "<code>vendor/django/contrib/staticfiles/</code>" in page.text

    first = _run(services.deployment_create(project=project, servers=[server], user=alice))
    assert first.status == Status.SUCCEEDED, first.error
    assert '"staticfiles/" (excluded files) removed 2 paths' in _log(first)
    shared = sshd_target.deploy_path / "shared"
    assert (shared / "storage" / "seed.txt").read_text() == "seed from git\n"
    assert (shared / "config" / "app.ini").read_text() == "[app]\nname = shop\n"
    live = sshd_target.deploy_path / "current"
    assert stat.S_IMODE((live / ".env").stat().st_mode) == 0o600
    assert list((live / "shop" / "__pycache__").glob("views.*.pyc"))

    again = _run(services.deployment_create(project=project, servers=[server], user=alice))
    assert again.status == Status.SUCCEEDED, again.error
    assert again.changes["added"] == again.changes["modified"] == again.changes["deleted"] == []
    assert "changed on the server" not in _log(again)
    assert "Seeding" not in _log(again)
    assert (shared / "storage" / "seed.txt").read_text() == "seed from git\n"
