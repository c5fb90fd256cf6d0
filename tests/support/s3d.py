"""A real S3 API server on loopback: moto's server mode (``python -m moto.server``), in a
process of its own for the test session, with authentication on.

moto checks signatures once ``INITIAL_NO_AUTH_ACTION_COUNT`` requests have been served
without: those create an IAM user with a policy allowing everything and its access key,
then every request must be signed with that key (a wrong key id or secret is refused as
AWS refuses it: InvalidAccessKeyId, SignatureDoesNotMatch).

``s3_target`` gives each test a fresh bucket, versioned, so that a test can count how many
times an object was written (``versions``); ``requests()`` answers the requests the server
received since the test began (moto's recorder), in order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3
import httpx
import pytest
from botocore.config import Config

from builds.engine.s3 import S3Endpoint
from tests.support.processes import free_port

REGION = "eu-west-1"
# moto needs these set up before authentication starts: user, policy, access key.
_UNAUTHENTICATED_SETUP_REQUESTS = 3


@dataclass
class MotoServer:
    url: str
    access_key_id: str
    secret_access_key: str
    recording: Path

    def client(self, **overrides: Any) -> Any:
        values: dict[str, Any] = {
            "endpoint_url": self.url,
            "region_name": REGION,
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
            "config": Config(s3={"addressing_style": "path"}),
        }
        values.update(overrides)
        return boto3.client("s3", **values)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    port = free_port()
    folder = tmp_path_factory.mktemp("moto")
    recording = folder / "recording.log"
    env = {
        **os.environ,
        "INITIAL_NO_AUTH_ACTION_COUNT": str(_UNAUTHENTICATED_SETUP_REQUESTS),
        "MOTO_ENABLE_RECORDING": "true",
        "MOTO_RECORDER_FILEPATH": str(recording),
    }
    log = (folder / "moto.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise AssertionError(f"moto server exited: {(folder / 'moto.log').read_text()}")
            try:
                # The recorder's endpoint is not an AWS action: it does not count.
                httpx.get(f"{url}/moto-api/recorder/download-recording", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        iam = boto3.client(
            "iam",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )
        iam.create_user(UserName="deploy")
        iam.put_user_policy(
            UserName="deploy",
            PolicyName="everything",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
                }
            ),
        )
        key = iam.create_access_key(UserName="deploy")["AccessKey"]
        yield MotoServer(url, key["AccessKeyId"], key["SecretAccessKey"], recording)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@dataclass
class S3Target:
    server: MotoServer
    bucket: str
    prefix: str

    @property
    def url(self) -> str:
        return self.server.url

    def client(self) -> Any:
        return self.server.client()

    def endpoint(self, **overrides: Any) -> S3Endpoint:
        values: dict[str, Any] = {
            "bucket": self.bucket,
            "prefix": self.prefix,
            "region": REGION,
            "endpoint_url": self.server.url,
            "path_style": True,
            "access_key_id": self.server.access_key_id,
            "secret_access_key": self.server.secret_access_key,
            "max_attempts": 2,
        }
        values.update(overrides)
        return S3Endpoint(**values)

    def objects(self) -> dict[str, bytes]:
        """Every object under the prefix but Slipway's own: path -> body."""
        s3 = self.client()
        found = {}
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        ):
            for item in page.get("Contents", []):
                path = item["Key"][len(self.prefix) :]
                if not path.startswith(".slipway/"):
                    found[path] = s3.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
        return found

    def head(self, path: str) -> dict[str, Any]:
        return dict(self.client().head_object(Bucket=self.bucket, Key=self.prefix + path))

    def versions(self) -> dict[str, int]:
        """How many times each object under the prefix was written (versions, delete
        markers left out), Slipway's own included."""
        counts: dict[str, int] = {}
        pages = self.client().get_paginator("list_object_versions")
        for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Versions", []):
                path = item["Key"][len(self.prefix) :]
                counts[path] = counts.get(path, 0) + 1
        return counts

    def start_recording(self) -> None:
        httpx.post(f"{self.url}/moto-api/recorder/reset-recording", timeout=10)
        httpx.post(f"{self.url}/moto-api/recorder/start-recording", timeout=10)

    def requests(self) -> list[tuple[str, str]]:
        """(method, object path under the prefix, query) of each request recorded since
        ``start_recording`` on this bucket, in order."""
        httpx.post(f"{self.url}/moto-api/recorder/stop-recording", timeout=10)
        text = httpx.get(f"{self.url}/moto-api/recorder/download-recording", timeout=10).text
        found = []
        for line in text.splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            parts = urlsplit(entry.get("url", ""))
            path = unquote(parts.path).lstrip("/")
            bucket, _, key = path.partition("/")
            if bucket != self.bucket:
                continue
            method = entry.get("method", "")
            if parts.query:
                method += "?" + parts.query.split("=")[0]
            found.append((method, key[len(self.prefix) :] if key else ""))
        return found


@pytest.fixture
def s3_target(moto_server: MotoServer) -> S3Target:
    bucket = f"site-{uuid.uuid4().hex[:12]}"
    s3 = moto_server.client()
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return S3Target(moto_server, bucket, "www/")
