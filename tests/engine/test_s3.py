"""S3-compatible buckets: files become objects by manifest, against a real S3 API server on
loopback (moto's server mode, tests/support/s3d.py) with boto3: uploads before deletes,
only what changed, drift restored, multipart, errors that name what to fix."""

from __future__ import annotations

import pytest

from builds.engine import pipeline, s3
from builds.engine.addresses import AddressRefused
from builds.engine.errors import AuthenticationRefused, BucketNotFound, InvalidInput
from builds.engine.ssh import Endpoint
from tests.support.engine import RecordingReporter, deploy_spec

SITE = {
    "index.html": "<h1>Shop</h1>\n",
    "css/site.css": "body { color: black }\n",
    "js/app.js": "console.log('v1')\n",
    "img/logo.svg": "<svg/>\n",
}


def s3_server(target, server_id: int = 1, **endpoint_overrides) -> pipeline.ServerSpec:
    return pipeline.ServerSpec(
        id=server_id,
        name=f"bucket{server_id}",
        endpoint=Endpoint(hostname="127.0.0.1", username=target.bucket, port=1),
        deploy_path=f"/{target.bucket}/www",
        atomic=False,
        shell=False,
        s3=target.endpoint(**endpoint_overrides),
    )


def _deploy(repo, tmp_path, server, revision, deployment_id, **overrides):
    reporter = RecordingReporter()
    result = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server], revision, deployment_id=deployment_id, **overrides),
        reporter,
    )
    return result, reporter


def _ok(result) -> None:
    assert result.ok, [str(r.error) for r in result.servers]


def test_it_uploads_only_what_changed_then_deletes_what_is_gone(
    s3_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit(SITE, "A")
    server = s3_server(s3_target)
    first, reporter = _deploy(repo, tmp_path, server, a, 1)
    _ok(first)
    assert s3_target.objects() == {p: c.encode() for p, c in SITE.items()}
    head = s3_target.head("css/site.css")
    assert head["ContentType"] == "text/css"
    assert len(head["Metadata"]["slipway-sha256"]) == 64
    assert set(s3_target.client().list_objects_v2(Bucket=s3_target.bucket)["Contents"][0])

    b = repo.commit(
        {"js/app.js": "console.log('v2')\n", "about.html": "<p>us</p>\n", "img/logo.svg": None}, "B"
    )
    s3_target.start_recording()
    second, reporter = _deploy(repo, tmp_path, s3_server(s3_target), b, 2)
    _ok(second)
    requests = s3_target.requests()
    puts = [
        path for method, path in requests if method == "PUT" and not path.startswith(".slipway")
    ]
    assert sorted(puts) == ["about.html", "js/app.js"]
    deleting = requests.index(("POST?delete", ""))
    assert all(requests.index(("PUT", p)) < deleting for p in puts)
    versions = s3_target.versions()
    assert versions["index.html"] == 1 and versions["js/app.js"] == 2
    assert "img/logo.svg" not in s3_target.objects()
    assert "Deleting 1 objects" in reporter.text


def test_it_restores_objects_changed_in_the_bucket_since_the_last_deployment(
    s3_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit(SITE, "A")
    _ok(_deploy(repo, tmp_path, s3_server(s3_target), a, 1)[0])
    client = s3_target.client()
    key = s3_target.prefix
    client.put_object(Bucket=s3_target.bucket, Key=key + "index.html", Body=b"defaced")
    client.delete_object(Bucket=s3_target.bucket, Key=key + "css/site.css")
    client.put_object(Bucket=s3_target.bucket, Key=key + "dropped.php", Body=b"<?php")

    result, reporter = _deploy(repo, tmp_path, s3_server(s3_target), a, 2)
    _ok(result)
    assert s3_target.objects() == {p: c.encode() for p, c in SITE.items()}
    assert "3 objects were changed in the bucket since the last deployment" in reporter.text


def test_it_sends_a_large_file_in_parts(s3_target, git_repo_factory, tmp_path):
    repo = git_repo_factory()
    big = "0123456789abcdef" * (20 * 1024 * 1024 // 16)  # 20 MiB
    a = repo.commit({**SITE, "video/intro.bin": big}, "A")
    _ok(_deploy(repo, tmp_path, s3_server(s3_target, parallel_uploads=3), a, 1)[0])
    head = s3_target.head("video/intro.bin")
    assert head["ContentLength"] == len(big)
    assert head["ETag"].strip('"').endswith("-3")  # 8 MiB parts: 8 + 8 + 4
    assert s3_target.objects()["video/intro.bin"] == big.encode()


def test_it_gives_objects_the_headers_of_the_rules_that_match(
    s3_target, git_repo_factory, tmp_path
):
    rules = s3.parse_object_rules(
        "# long-lived assets\n"
        '*.css cache_control="public, max-age=31536000, immutable" storage_class=STANDARD_IA\n'
        "*.html cache_control=no-cache acl=public-read\n"
        "img/* acl=private\n"
    )
    repo = git_repo_factory()
    a = repo.commit(SITE, "A")
    _ok(_deploy(repo, tmp_path, s3_server(s3_target, rules=rules), a, 1)[0])
    css = s3_target.head("css/site.css")
    assert css["CacheControl"] == "public, max-age=31536000, immutable"
    assert css["StorageClass"] == "STANDARD_IA"
    assert s3_target.head("index.html")["CacheControl"] == "no-cache"
    assert s3_target.head("img/logo.svg")["ContentType"] == "image/svg+xml"
    grants = s3_target.client().get_object_acl(
        Bucket=s3_target.bucket, Key=s3_target.prefix + "index.html"
    )["Grants"]
    assert any(g["Grantee"].get("URI", "").endswith("/global/AllUsers") for g in grants)


def test_it_refuses_rules_it_cannot_read_naming_the_line():
    with pytest.raises(InvalidInput, match=r"s3_object_rules: line 2 .*acl must be one of"):
        s3.parse_object_rules("*.css acl=private\n*.js acl=everyone\n")
    with pytest.raises(InvalidInput, match="s3_object_rules: line 1"):
        s3.parse_object_rules("*.css max_age=60\n")


def test_it_names_a_wrong_access_key_id_without_showing_the_secret(
    s3_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit(SITE, "A")
    server = s3_server(s3_target, access_key_id="AKIAWRONGKEY00000000")
    result, reporter = _deploy(repo, tmp_path, server, a, 1)
    error = str(result.servers[0].error)
    assert "does not know the access key id AKIA…0000" in error
    assert "s3_access_key_id" in error
    assert s3_target.server.secret_access_key not in error + reporter.text


def test_it_names_a_wrong_secret(s3_target):
    endpoint = s3_target.endpoint(secret_access_key="not-the-secret-at-all")
    with pytest.raises(AuthenticationRefused) as raised:
        s3.probe(endpoint)
    assert "s3_secret_access_key" in str(raised.value)
    assert "not-the-secret-at-all" not in str(raised.value)


def test_it_names_a_missing_bucket_its_endpoint_and_what_to_do(s3_target):
    endpoint = s3_target.endpoint(bucket="no-such-bucket-here")
    with pytest.raises(BucketNotFound) as raised:
        s3.probe(endpoint)
    message = str(raised.value)
    assert "'no-such-bucket-here' does not exist at " + s3_target.url in message
    assert "create it, or correct the server's s3_bucket" in message


def test_it_asks_the_address_policy_before_any_request(s3_target):
    asked = []

    def refuse(host: str, port: int) -> None:
        asked.append((host, port))
        raise AddressRefused(f"{host}:{port} is a loopback address")

    s3_target.start_recording()
    with pytest.raises(AddressRefused):
        s3.probe(s3_target.endpoint(check_address=refuse))
    assert asked == [("127.0.0.1", int(s3_target.url.rsplit(":", 1)[1]))]
    assert s3_target.requests() == []


def test_it_probes_by_listing_then_writing_and_deleting_a_test_object(s3_target):
    found = s3.probe(s3_target.endpoint())
    assert found.writable
    assert s3_target.objects() == {}


def test_a_lock_held_by_another_deployment_refuses_and_a_finished_ones_is_taken_over(
    s3_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit(SITE, "A")
    bucket = s3.Bucket(s3_target.endpoint())
    s3.take_lock(
        bucket,
        owner="deployment-7",
        holder="Slipway deployment #7",
        stale_after=3600,
        owner_finished=lambda owner: False,
    )
    refused, _ = _deploy(repo, tmp_path, s3_server(s3_target), a, 8)
    assert not refused.ok
    assert "is locked by another deployment: Slipway deployment #7" in str(refused.servers[0].error)
    assert s3_target.objects() == {}

    taken, reporter = _deploy(
        repo, tmp_path, s3_server(s3_target), a, 9, lock_owner_finished=lambda owner: True
    )
    _ok(taken)
    assert "Took over the lock of deployment-7, which has finished" in reporter.text
    assert s3.read_lock(bucket) is None
