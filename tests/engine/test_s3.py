"""S3-compatible buckets: files become objects by manifest, against a real S3 API server on
loopback (moto's server mode, tests/support/s3d.py) with boto3: uploads before deletes,
only what changed, drift restored, multipart, errors that name what to fix."""

from __future__ import annotations

import http.client
import http.server
import threading
from urllib.parse import urlsplit

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


class ThrottlingProxy:
    """An HTTP proxy on loopback in front of moto that answers ``503 SlowDown`` (the S3 error
    of AWS's "Error responses" page) to PUTs of the site's objects: the first ``throttled``
    tries of each key, then forwards. The request goes on unchanged, Host header included, so
    that moto checks the signature made for the proxy's address."""

    BODY = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
        b"<Message>Please reduce your request rate.</Message>"
        b"<RequestId>4442587FB7D0A2F9</RequestId><HostId>proxy</HostId></Error>"
    )

    def __init__(self, upstream: str, throttled: int) -> None:
        self.upstream = urlsplit(upstream)
        self.throttled = throttled
        self.puts: dict[str, int] = {}
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                key = urlsplit(self.path).path
                if self.command == "PUT" and "/.slipway/" not in key:
                    with proxy.lock:
                        tries = proxy.puts[key] = proxy.puts.get(key, 0) + 1
                    if tries <= proxy.throttled:
                        self.send_response(503)
                        self.send_header("Content-Type", "application/xml")
                        self.send_header("Content-Length", str(len(ThrottlingProxy.BODY)))
                        self.end_headers()
                        self.wfile.write(ThrottlingProxy.BODY)
                        return
                upstream = http.client.HTTPConnection(
                    proxy.upstream.hostname or "127.0.0.1", proxy.upstream.port, timeout=30
                )
                try:
                    upstream.putrequest(self.command, self.path, skip_host=True)
                    for name, value in self.headers.items():
                        upstream.putheader(name, value)
                    upstream.endheaders(body or None)
                    answer = upstream.getresponse()
                    data = answer.read()
                finally:
                    upstream.close()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ThrottlingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_throttled_uploads_are_retried_with_back_off_until_they_land(
    s3_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit(SITE, "A")
    with ThrottlingProxy(s3_target.url, throttled=2) as proxy:
        server = s3_server(s3_target, endpoint_url=proxy.url, max_attempts=3)
        result, _ = _deploy(repo, tmp_path, server, a, 1)
    _ok(result)
    assert s3_target.objects() == {p: c.encode() for p, c in SITE.items()}
    # Each object was refused twice, then accepted on the third (last allowed) attempt.
    assert sorted(proxy.puts.values()) == [3] * len(SITE)


def test_throttling_that_does_not_stop_fails_after_the_attempts_allowed_naming_it(
    s3_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit(SITE, "A")
    with ThrottlingProxy(s3_target.url, throttled=1000) as proxy:
        server = s3_server(s3_target, endpoint_url=proxy.url, max_attempts=3, parallel_uploads=1)
        result, _ = _deploy(repo, tmp_path, server, a, 1)
    assert not result.ok
    error = str(result.servers[0].error)
    assert "kept throttling requests (SlowDown)" in error
    assert "after 3 attempts with back-off" in error and "s3_parallel_uploads" in error
    # max_attempts counts every try of a request, the first included.
    assert max(proxy.puts.values()) == 3
    assert s3_target.objects() == {}
