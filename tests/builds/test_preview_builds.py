"""A preview of a project with build commands runs the build, so that it shows what the
deployment after it sends: the same files added, modified and deleted, the same bytes."""

from __future__ import annotations

import pytest

from builds import services
from builds.models import Deployment, Kind, LogLine, Status
from builds.tasks import run_deployment
from projects.models import BuildCommand

pytestmark = pytest.mark.django_db(transaction=True)

# A bundler in miniature: the bundle is the sources repeated, far bigger than they are, and
# the sources' folder is not deployed.
BUNDLE = (
    "mkdir -p dist && for i in $(seq 1 500); do cat src/*.js; done > dist/bundle.js && rm -rf src"
)


def _run(deployment: Deployment) -> Deployment:
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    return deployment


def _log(deployment: Deployment) -> str:
    return "\n".join(LogLine.objects.filter(deployment=deployment).values_list("text", flat=True))


def test_a_preview_shows_what_the_deployment_after_it_sends(
    git_repo_factory, sshd_target, project_factory, server_factory
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n", "src/app.js": "console.log('a');\n"}, "First")
    project = project_factory(repo)
    BuildCommand.objects.create(project=project, command=BUNDLE)
    server = server_factory(project, sshd_target)

    first_preview = _run(
        services.deployment_create(project=project, servers=[server], kind=Kind.PREVIEW)
    )
    assert first_preview.status == Status.SUCCEEDED, first_preview.error
    assert "dist/bundle.js" in first_preview.changes["added"]
    assert "src/app.js" not in first_preview.changes["added"]
    first = _run(services.deployment_create(project=project, servers=[server]))
    assert first.status == Status.SUCCEEDED, first.error
    # A preview also reports what the exclude patterns left out; the rest is the same.
    assert {k: v for k, v in first_preview.changes.items() if k != "excluded"} == first.changes

    repo.commit({"src/app.js": "console.log('b, longer');\n", "index.html": None}, "Second")
    preview = _run(services.deployment_create(project=project, servers=[server], kind=Kind.PREVIEW))
    assert preview.status == Status.SUCCEEDED, preview.error
    assert f"$ {BUNDLE}" in _log(preview)
    assert (
        not (sshd_target.deploy_path / "current" / "dist" / "bundle.js").read_text().count("longer")
    )

    deployment = _run(services.deployment_create(project=project, servers=[server]))
    assert deployment.status == Status.SUCCEEDED, deployment.error
    assert preview.changes["modified"] == deployment.changes["modified"] == ["dist/bundle.js"]
    assert preview.changes["deleted"] == deployment.changes["deleted"] == ["index.html"]
    assert preview.changes["added"] == deployment.changes["added"] == []
    sent = (sshd_target.deploy_path / "current" / "dist" / "bundle.js").stat().st_size
    assert preview.changes["bytes"] == deployment.changes["bytes"] == sent
    assert sent == 500 * len("console.log('b, longer');\n")


def test_a_preview_that_skips_the_build_says_so(
    git_repo_factory, sshd_target, project_factory, server_factory
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n", "src/app.js": "console.log('a');\n"}, "First")
    project = project_factory(repo)
    BuildCommand.objects.create(project=project, command=BUNDLE)
    server = server_factory(project, sshd_target)

    preview = _run(
        services.deployment_create(
            project=project, servers=[server], kind=Kind.PREVIEW, skip_build=True
        )
    )
    assert preview.status == Status.SUCCEEDED, preview.error
    log = _log(preview)
    assert "The build commands did not run (this preview skips the build, as asked)" in log
    assert "(build commands not run: see above)" in log
    assert f"$ {BUNDLE}" not in log
    assert sorted(preview.changes["added"]) == ["index.html", "src/app.js"]
