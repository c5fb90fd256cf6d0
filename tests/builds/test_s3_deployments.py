"""S3 buckets through the worker: a deployment, an incremental one, drift restored and a
rollback recorded in the database, against moto's S3 server on loopback
(tests/support/s3d.py); the endpoint through the servers' address policy; wrong keys and a
missing bucket named, no secret anywhere."""

from __future__ import annotations

import pytest

from builds import services
from builds.engine import s3
from builds.engine.errors import InvalidInput
from builds.models import Deployment, Kind, LogLine, Status
from builds.tasks import run_deployment
from servers.models import Protocol, Release, Server
from servers.services import server_check, server_create, server_lock_break

pytestmark = pytest.mark.django_db(transaction=True)


def _run(deployment: Deployment) -> Deployment:
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    return deployment


def _log(deployment: Deployment) -> str:
    return "\n".join(LogLine.objects.filter(deployment=deployment).values_list("text", flat=True))


def _bucket_server(project, target, alice, **fields) -> Server:
    values = {
        "name": "static-site",
        "protocol": Protocol.S3,
        "s3_endpoint_url": target.url,
        "s3_region": "eu-west-1",
        "s3_bucket": target.bucket,
        "s3_prefix": target.prefix,
        "s3_path_style": True,
        "s3_access_key_id": target.server.access_key_id,
        "s3_secret_access_key": target.server.secret_access_key,
        "s3_object_rules": "*.html cache_control=no-cache",
        **fields,
    }
    return server_create(project=project, actor=alice, **values)


def test_it_deploys_to_a_bucket_incrementally_then_rolls_back_by_uploading_again(
    git_repo_factory, s3_target, project_factory, alice
):
    repo = git_repo_factory()
    a = repo.commit({"index.html": "A\n", "about.html": "about\n", "app.js": "1\n"}, "A")
    project = project_factory(repo)
    server = _bucket_server(project, s3_target, alice)
    assert server.atomic is False and server.deploy_path == f"/{s3_target.bucket}/www"

    first = _run(services.deployment_create(project=project, servers=[server], user=alice))
    assert first.status == Status.SUCCEEDED, first.error
    assert s3_target.objects() == {"index.html": b"A\n", "about.html": b"about\n", "app.js": b"1\n"}
    assert s3_target.head("index.html")["CacheControl"] == "no-cache"

    b = repo.commit({"index.html": "B\n", "about.html": None}, "B")
    second = _run(services.deployment_create(project=project, servers=[server], user=alice))
    assert second.status == Status.SUCCEEDED, second.error
    assert second.end_revision == b
    assert s3_target.objects() == {"index.html": b"B\n", "app.js": b"1\n"}
    versions = s3_target.versions()
    assert versions["index.html"] == 2 and versions["app.js"] == 1  # app.js not sent again
    releases = list(Release.objects.filter(server=server).order_by("created_at"))
    assert [r.revision for r in releases] == [a, b] and [r.live for r in releases] == [False, True]
    assert releases[1].manifest  # the manifest is in the database as well as in the bucket
    assert ".slipway/manifest.json" in versions

    s3_target.start_recording()
    rollback = _run(
        services.deployment_create(
            project=project, servers=[server], kind=Kind.ROLLBACK, user=alice, rollback_of=second
        )
    )
    assert rollback.status == Status.SUCCEEDED, rollback.error
    assert s3_target.objects() == {"index.html": b"A\n", "about.html": b"about\n", "app.js": b"1\n"}
    sent = sorted(p for m, p in s3_target.requests() if m == "PUT" and not p.startswith(".slipway"))
    assert sent == ["about.html", "index.html"]
    assert f"Rolling back to {releases[0].name}: a bucket has no symlink to switch" in _log(
        rollback
    )
    assert Release.objects.get(server=server, live=True).name == releases[0].name


def test_objects_changed_in_the_bucket_are_restored_by_the_next_deployment(
    git_repo_factory, s3_target, project_factory, alice
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server = _bucket_server(project, s3_target, alice)
    assert _run(
        services.deployment_create(project=project, servers=[server], user=alice)
    ).status == (Status.SUCCEEDED)
    s3_target.client().put_object(
        Bucket=s3_target.bucket, Key="www/index.html", Body=b"changed by hand"
    )
    again = _run(services.deployment_create(project=project, servers=[server], user=alice))
    assert again.status == Status.SUCCEEDED, again.error
    assert s3_target.objects() == {"index.html": b"A\n"}
    assert "1 objects were changed in the bucket since the last deployment" in _log(again)


def test_a_wrong_secret_fails_the_deployment_and_the_check_without_showing_it(
    git_repo_factory, s3_target, project_factory, alice
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server = _bucket_server(project, s3_target, alice, s3_secret_access_key="wrong-secret-value")
    failed = _run(services.deployment_create(project=project, servers=[server], user=alice))
    assert failed.status == Status.FAILED
    assert failed.error_code == "authentication_refused"
    assert "s3_secret_access_key" in failed.error
    check = server_check(server=server)
    assert not check.ok and "s3_secret_access_key" in check.error
    for text in (_log(failed), failed.error, check.error):
        assert "wrong-secret-value" not in text
        assert s3_target.server.secret_access_key not in text


def test_a_missing_bucket_is_named_with_its_endpoint(
    git_repo_factory, s3_target, project_factory, alice
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server = _bucket_server(project, s3_target, alice, s3_bucket="not-created-yet")
    failed = _run(services.deployment_create(project=project, servers=[server], user=alice))
    assert failed.status == Status.FAILED and failed.error_code == "bucket_not_found"
    assert f"The bucket 'not-created-yet' does not exist at {s3_target.url}" in failed.error
    check = server_check(server=server)
    assert not check.ok and "create it, or correct the server's s3_bucket" in check.error
    assert server_check(server=_bucket_server(project, s3_target, alice, name="b")).ok


def test_the_endpoint_goes_through_the_servers_address_policy(
    git_repo_factory, s3_target, project_factory, alice, settings
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server = _bucket_server(project, s3_target, alice)
    settings.ALLOW_PRIVATE_SERVERS = False

    with pytest.raises(InvalidInput, match="SLIPWAY_ALLOW_PRIVATE_SERVERS=true") as refused:
        _bucket_server(project, s3_target, alice, name="another")
    assert refused.value.field == "s3_endpoint_url"
    with pytest.raises(InvalidInput, match="is a link-local address"):
        _bucket_server(
            project, s3_target, alice, name="metadata", s3_endpoint_url="http://169.254.169.254"
        )
    s3_target.start_recording()
    check = server_check(server=server)
    assert not check.ok and "SLIPWAY_ALLOW_PRIVATE_SERVERS=true" in check.error
    failed = _run(services.deployment_create(project=project, servers=[server], user=alice))
    assert failed.status == Status.FAILED and "loopback address" in failed.error
    assert s3_target.requests() == []  # nothing was sent


def test_a_20_mb_file_goes_up_in_parts_through_the_worker(
    git_repo_factory, s3_target, project_factory, alice
):
    repo = git_repo_factory()
    big = "0123456789abcdef" * (20 * 1024 * 1024 // 16)  # 20 MiB
    repo.commit({"index.html": "A\n", "downloads/app.bin": big}, "A")
    project = project_factory(repo)
    server = _bucket_server(project, s3_target, alice, s3_parallel_uploads=2)
    done = _run(services.deployment_create(project=project, servers=[server], user=alice))
    assert done.status == Status.SUCCEEDED, done.error
    head = s3_target.head("downloads/app.bin")
    assert head["ContentLength"] == len(big) and head["ETag"].strip('"').endswith("-3")


def test_a_lock_left_in_the_bucket_is_broken_from_the_server_page_service(
    s3_target, project_factory, git_repo_factory, alice
):
    project = project_factory(git_repo_factory())
    server = _bucket_server(project, s3_target, alice)
    bucket = s3.Bucket(s3_target.endpoint())
    s3.take_lock(
        bucket,
        owner="",
        holder="someone by hand",
        stale_after=3600,
        owner_finished=lambda owner: False,
    )
    result = server_lock_break(server=server, user=alice)
    assert result.broken
    assert s3.read_lock(bucket) is None
    assert not server_lock_break(server=server, user=alice).broken
