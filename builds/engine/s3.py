"""S3-compatible storage as a server: the build's files become objects of a bucket, by manifest.

There is no release directory, no symlink and no shell in a bucket. A deployment uploads the
added and modified files first (content type by extension, the file's SHA-256 in the
object's metadata, ACL / storage class / cache-control by the server's rules), and deletes
the removed ones after, so a site served from the bucket never links to an object that is
not there yet. Under the key prefix, ``.slipway/`` holds the manifest of what went live
(``manifest.json``), the listing taken when the deployment finished (``listing.json``: the
size and ETag of every object, as ListObjectsV2 reports them) and the lock. An object whose
size or ETag differs from that listing at the next deployment was changed in the bucket
since, and is restored (``rollout.with_drift``), as on SSH and FTP servers.

boto3 is the client (https://boto3.amazonaws.com/v1/documentation/api/latest/): one
s3transfer TransferManager sends every file, multipart above ``multipart_threshold``, with
at most ``parallel_uploads`` requests in flight in all; botocore retries throttling and
transient errors with exponential back-off (retry modes "standard" and "adaptive",
https://docs.aws.amazon.com/sdkref/latest/guide/feature-retry-behavior.html). Every request's
host goes through ``S3Endpoint.check_address`` (the servers' outbound-address policy) before
it is sent, so neither the endpoint nor a redirect to another region can lead elsewhere.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import mimetypes
import re
import shlex
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import boto3
import botocore.exceptions
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from s3transfer.subscribers import BaseSubscriber

from builds.engine import release
from builds.engine.direct import in_place_variables
from builds.engine.drift import DriftReport, refuse_drift, report_from_listings
from builds.engine.errors import (
    AuthenticationRefused,
    BucketNotFound,
    EngineError,
    HostUnreachable,
    InvalidInput,
    LockHeld,
    PermissionDenied,
    TransferFailed,
    UserError,
)
from builds.engine.ftp import refusals
from builds.engine.manifest import Manifest, diff, display_path
from builds.engine.specs import LEFT_RUNNING_SUFFIX, lock_owner
from builds.engine.variables import substitute

if TYPE_CHECKING:
    from builds.engine.build import BuildOutput
    from builds.engine.specs import DeploySpec, Reporter, ServerResult, ServerSpec

#: Slipway's own keys live under ``<prefix>.slipway/``: never deployed, listed or deleted.
META_PREFIX = ".slipway/"
MANIFEST_KEY = ".slipway/manifest.json"
LISTING_KEY = ".slipway/listing.json"
LOCK_KEY = ".slipway/lock"
PROBE_KEY = ".slipway/connection-test"
MAX_PARALLEL_UPLOADS = 64
MIB = 1024 * 1024
#: S3's smallest part is 5 MiB (https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html).
MIN_PART_BYTES = 5 * MIB
RETRY_MODES = ("standard", "adaptive")
#: The canned ACLs of S3's PutObject (x-amz-acl).
CANNED_ACLS = (
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "aws-exec-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
)
#: Bucket names as S3 allows them (general purpose buckets):
#: https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,49}")
# A key prefix is written as a deploy path would be: ordinary characters, no '..'.
_PREFIX = re.compile(r"[A-Za-z0-9._@+~ /-]*")
_STORAGE_CLASS = re.compile(r"[A-Z][A-Z0-9_]{0,39}")
_DELETE_BATCH = 1000  # DeleteObjects takes at most 1,000 keys per request.


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ObjectRule:
    """Headers given to the objects whose path matches ``pattern`` (fnmatch; a pattern
    without "/" is matched against the file name, one with "/" against the whole path,
    ``*`` crossing folders). Empty values set nothing."""

    pattern: str
    acl: str = ""
    storage_class: str = ""
    cache_control: str = ""

    def matches(self, path: str) -> bool:
        target = path if "/" in self.pattern else path.rpartition("/")[2]
        return fnmatch.fnmatchcase(target, self.pattern)


def parse_object_rules(text: str) -> tuple[ObjectRule, ...]:
    """The rules of ``s3_object_rules``: one per line, ``<pattern> key=value ...`` with
    keys ``acl`` (a canned ACL), ``storage_class`` and ``cache_control``; shell quoting
    (``cache_control="public, max-age=60"``), blank lines and ``#`` comments allowed. For each
    header the last matching rule that sets it wins. Raises InvalidInput naming
    s3_object_rules and the line."""
    rules: list[ObjectRule] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"line {number} ({line.strip()[:80]!r})"
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise InvalidInput("s3_object_rules", f"{where}: {exc}") from None
        if len(words) < 2:
            raise InvalidInput(
                "s3_object_rules",
                f"{where}: write a pattern, then one or more of acl=, storage_class=, "
                "cache_control=",
            )
        values: dict[str, str] = {}
        for word in words[1:]:
            key, sep, value = word.partition("=")
            if not sep or key not in ("acl", "storage_class", "cache_control"):
                raise InvalidInput(
                    "s3_object_rules",
                    f"{where}: {word!r} is not acl=…, storage_class=… or cache_control=…",
                )
            values[key] = value.strip()
        acl = values.get("acl", "")
        if acl and acl not in CANNED_ACLS:
            raise InvalidInput(
                "s3_object_rules", f"{where}: acl must be one of {', '.join(CANNED_ACLS)}"
            )
        storage_class = values.get("storage_class", "")
        if storage_class and not _STORAGE_CLASS.fullmatch(storage_class):
            raise InvalidInput(
                "s3_object_rules",
                f"{where}: storage_class is a name such as STANDARD_IA or INTELLIGENT_TIERING",
            )
        cache_control = values.get("cache_control", "")
        if cache_control and not all(32 <= ord(c) < 127 for c in cache_control):
            raise InvalidInput("s3_object_rules", f"{where}: cache_control must be printable ASCII")
        rules.append(ObjectRule(words[0], acl, storage_class, cache_control))
    return tuple(rules)


def validate_bucket(name: str) -> str:
    """A bucket name as S3 allows it (3-63 lower-case letters, digits, dots and hyphens,
    starting and ending with a letter or digit). Raises InvalidInput naming s3_bucket."""
    cleaned = name.strip()
    if not _BUCKET.fullmatch(cleaned) or ".." in cleaned:
        raise InvalidInput(
            "s3_bucket",
            f"{cleaned!r} is not a bucket name: 3 to 63 lower-case letters, digits, dots and "
            "hyphens, starting and ending with a letter or digit",
        )
    return cleaned


def validate_region(name: str) -> str:
    """A region name such as ``eu-west-1`` (S3-compatible services: often ``us-east-1``
    or ``auto``). Raises InvalidInput naming s3_region."""
    cleaned = name.strip()
    if not _REGION.fullmatch(cleaned):
        raise InvalidInput(
            "s3_region", f"{cleaned!r} is not a region name such as eu-west-1 or us-east-1"
        )
    return cleaned


def validate_prefix(prefix: str) -> str:
    """The key prefix every object gets, "" or ending in "/" (``site`` becomes ``site/``):
    ordinary characters only, no "..", no empty part. Raises InvalidInput naming s3_prefix."""
    cleaned = prefix.strip().strip("/")
    if not cleaned:
        return ""
    parts = cleaned.split("/")
    if not _PREFIX.fullmatch(cleaned) or any(p in ("", ".", "..") for p in parts):
        raise InvalidInput(
            "s3_prefix",
            f"{prefix!r} may hold only letters, digits, spaces and . _ / @ + ~ -, without "
            "'..' or empty parts",
        )
    if parts[0] == META_PREFIX.rstrip("/"):
        raise InvalidInput("s3_prefix", f"{prefix!r} must not start with {META_PREFIX}")
    return cleaned + "/"


def validate_endpoint_url(url: str) -> str:
    """An S3 endpoint as ``https://host[:port]`` (or ``http://``), without a path,
    credentials, query or fragment; "" means AWS (``https://s3.<region>.amazonaws.com``).
    Raises InvalidInput naming s3_endpoint_url."""
    cleaned = url.strip().rstrip("/")
    if not cleaned:
        return ""
    try:
        parts = urlsplit(cleaned)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput("s3_endpoint_url", f"{cleaned!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(
            "s3_endpoint_url",
            f"{cleaned!r} must be an http:// or https:// URL such as "
            "https://s3.eu-central-1.amazonaws.com or https://minio.example.com:9000",
        )
    if parts.username is not None or parts.password is not None:
        raise InvalidInput(
            "s3_endpoint_url",
            "must not hold credentials: give them as s3_access_key_id and s3_secret_access_key",
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidInput(
            "s3_endpoint_url",
            f"{cleaned!r} must name the service only (scheme, host, port): the bucket and "
            "key prefix are settings of their own",
        )
    del port
    return cleaned


def masked_key_id(key_id: str) -> str:
    """An access key id as shown in pages, logs and errors: its first and last 4
    characters (``AKIA…MPLE``), "…" alone when shorter than 12."""
    if len(key_id) < 12:
        return "…"
    return f"{key_id[:4]}…{key_id[-4:]}"


@dataclass(frozen=True)
class S3Endpoint:
    """One S3-compatible bucket to deploy into, and how to reach it.

    ``endpoint_url``: ``https://host[:port]``, "" for AWS in ``region``. ``prefix``: "" or
    ending in "/" (``validate_prefix``). ``path_style``: ``https://host/bucket/key`` instead
    of ``https://bucket.host/key`` (MinIO and most self-hosted services need it).
    ``parallel_uploads``: requests in flight at once, parts of a multipart upload included
    (1..64). Files of ``multipart_threshold`` bytes or more go in parts of
    ``multipart_chunksize`` bytes (at least 5 MiB). ``max_attempts``: tries of one request,
    with back-off, under botocore's ``retry_mode``. ``check_address(host, port)``: raises
    (e.g. builds.engine.addresses.AddressRefused) for a host no request may go to; called
    before the first request to each host. The keys stay out of ``repr``."""

    bucket: str
    access_key_id: str = field(default="", repr=False)
    secret_access_key: str = field(default="", repr=False)
    region: str = "us-east-1"
    endpoint_url: str = ""
    prefix: str = ""
    path_style: bool = False
    rules: tuple[ObjectRule, ...] = ()
    parallel_uploads: int = 8
    multipart_threshold: int = 8 * MIB
    multipart_chunksize: int = 8 * MIB
    max_attempts: int = 8
    retry_mode: str = "adaptive"
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    check_address: Callable[[str, int], None] | None = field(
        default=None, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        validate_bucket(self.bucket)
        validate_region(self.region)
        if validate_prefix(self.prefix) != self.prefix:
            raise InvalidInput("s3_prefix", f"{self.prefix!r}: write it as validate_prefix does")
        validate_endpoint_url(self.endpoint_url)
        if not self.access_key_id.strip():
            raise InvalidInput("s3_access_key_id", "is empty: give the access key id")
        if not self.secret_access_key:
            raise InvalidInput("s3_secret_access_key", "is empty: give the secret access key")
        if not 1 <= self.parallel_uploads <= MAX_PARALLEL_UPLOADS:
            raise InvalidInput(
                "s3_parallel_uploads", f"must be a whole number from 1 to {MAX_PARALLEL_UPLOADS}"
            )
        if self.multipart_chunksize < MIN_PART_BYTES:
            raise InvalidInput("multipart_chunksize", "must be at least 5 MiB (S3's smallest part)")
        if self.max_attempts < 1:
            raise InvalidInput("max_attempts", "must be at least 1")
        if self.retry_mode not in RETRY_MODES:
            raise InvalidInput("retry_mode", f"must be one of {', '.join(RETRY_MODES)}")

    @property
    def url(self) -> str:
        """The endpoint requests go to (AWS's regional one when none is set)."""
        return self.endpoint_url or f"https://s3.{self.region}.amazonaws.com"

    @property
    def location(self) -> str:
        """``s3://bucket/prefix at https://endpoint`` for messages."""
        return f"s3://{self.bucket}/{self.prefix} at {self.url}"

    def key(self, path: str) -> str:
        """The object key of a path of the build."""
        return self.prefix + path


# --------------------------------------------------------------------------- the client


def _guard(check: Callable[[str, int], None]) -> Callable[..., None]:
    """A botocore ``before-send`` handler checking each request's host once (raising
    stops the request before anything is sent)."""
    checked: set[tuple[str, int]] = set()
    lock = threading.Lock()

    def before_send(request: Any, **_: Any) -> None:
        parts = urlsplit(str(request.url))
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        with lock:
            if (host, port) in checked:
                return
        check(host, port)
        with lock:
            checked.add((host, port))

    return before_send


def client(endpoint: S3Endpoint) -> Any:
    """A boto3 S3 client for ``endpoint``: its own keys only (never the environment's, a
    profile or an instance role), path- or virtual-hosted-style addressing, retries with
    back-off, a connection pool as large as the uploads in flight. Checksums are computed
    only where the operation requires them: several S3-compatible services refuse the
    CRC32 headers botocore adds by default; each object carries its SHA-256 in its metadata
    (``slipway-sha256``) instead."""
    session = boto3.session.Session(
        aws_access_key_id=endpoint.access_key_id.strip(),
        aws_secret_access_key=endpoint.secret_access_key,
        region_name=endpoint.region,
    )
    config = Config(
        region_name=endpoint.region,
        signature_version="s3v4",
        s3={"addressing_style": "path" if endpoint.path_style else "virtual"},
        # total_max_attempts counts the first try too (botocore.config.Config).
        retries={"mode": endpoint.retry_mode, "total_max_attempts": endpoint.max_attempts},
        connect_timeout=endpoint.connect_timeout,
        read_timeout=endpoint.read_timeout,
        max_pool_connections=endpoint.parallel_uploads + 2,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        user_agent_extra="slipway",
    )
    made = session.client("s3", endpoint_url=endpoint.endpoint_url or None, config=config)
    if endpoint.check_address is not None:
        made.meta.events.register("before-send.s3", _guard(endpoint.check_address))
    return made


def _error(exc: BaseException, endpoint: S3Endpoint, doing: str) -> EngineError:
    """The user's error for a failed request while ``doing`` ("listing the bucket"...):
    names the endpoint, the bucket, the setting to correct; never a secret."""
    if isinstance(exc, EngineError):
        return exc
    where = endpoint.location
    key_id = masked_key_id(endpoint.access_key_id.strip())
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = str(error.get("Message", "")).strip()
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in ("InvalidAccessKeyId", "InvalidClientTokenId", "InvalidToken"):
            return AuthenticationRefused(
                f"{endpoint.url} does not know the access key id {key_id} ({code}) while "
                f"{doing}: check the server's s3_access_key_id, and that the key is active"
            )
        if code == "SignatureDoesNotMatch":
            return AuthenticationRefused(
                f"{endpoint.url} refused the secret access key given for {key_id} (the "
                f"request's signature does not match) while {doing}: enter the server's "
                "s3_secret_access_key again"
            )
        if code == "NoSuchBucket" or (code in ("404", "NotFound") and "bucket" in doing):
            return BucketNotFound(
                f"The bucket {endpoint.bucket!r} does not exist at {endpoint.url} (region "
                f"{endpoint.region}): create it, or correct the server's s3_bucket "
                "(and s3_endpoint_url / s3_region if it lives elsewhere)"
            )
        if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "301") or (
            code == "IllegalLocationConstraintException"
        ):
            region = (
                exc.response.get("ResponseMetadata", {})
                .get("HTTPHeaders", {})
                .get("x-amz-bucket-region", "")
            )
            hint = f"set s3_region to {region}" if region else "correct s3_region"
            return InvalidInput(
                "s3_region",
                f"the bucket {endpoint.bucket!r} is not in {endpoint.region} at "
                f"{endpoint.url} ({code}): {hint}",
            )
        if code in ("AccessDenied", "AllAccessDisabled", "403") or status == 403:
            return PermissionDenied(
                f"{where} refused {doing} to the access key {key_id} ({code or status}"
                f"{': ' + message if message else ''}). The key needs s3:ListBucket, "
                "s3:GetObject, s3:PutObject and s3:DeleteObject on the bucket (and "
                "s3:PutObjectAcl for ACL rules)"
            )
        if code in ("SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded"):
            return TransferFailed(
                f"{where} kept throttling requests ({code}) while {doing}, after "
                f"{endpoint.max_attempts} attempts with back-off: lower s3_parallel_uploads, "
                "or deploy again later"
            )
        return TransferFailed(
            f"{doing} failed at {where}: {code or status}{': ' + message if message else ''}"
        )
    if isinstance(
        exc,
        (
            botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectTimeoutError,
            botocore.exceptions.SSLError,
            botocore.exceptions.ProxyConnectionError,
        ),
    ):
        return HostUnreachable(
            f"Could not reach {endpoint.url} while {doing}: {exc}. Check s3_endpoint_url "
            "and that the service answers from Slipway's workers"
        )
    if isinstance(exc, botocore.exceptions.BotoCoreError | OSError):
        return TransferFailed(f"{doing} failed at {where}: {exc}")
    return TransferFailed(f"{doing} failed at {where}: {type(exc).__name__}")


@contextlib.contextmanager
def _doing(endpoint: S3Endpoint, doing: str) -> Iterator[None]:
    """Turn boto3's errors into the user's errors of ``_error``."""
    try:
        yield
    except EngineError:
        raise
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError) as exc:
        raise _error(exc, endpoint, doing) from None


class Bucket:
    """The objects under one endpoint's prefix, through one client."""

    def __init__(self, endpoint: S3Endpoint) -> None:
        self.endpoint = endpoint
        self.client = client(endpoint)

    def read(self, key: str) -> bytes | None:
        """The body of ``prefix + key``, None when there is no such object."""
        with _doing(self.endpoint, f"reading {self.endpoint.key(key)}"):
            try:
                answer = self.client.get_object(
                    Bucket=self.endpoint.bucket, Key=self.endpoint.key(key)
                )
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
            return bytes(answer["Body"].read())

    def write(self, key: str, body: bytes, path_for_headers: str | None = None) -> None:
        """Store ``body`` as ``prefix + key``; with ``path_for_headers``, with the headers
        a file of that path gets (content type, rules)."""
        extra = headers(self.endpoint, path_for_headers, body) if path_for_headers else {}
        if not path_for_headers:
            extra = {"ContentType": "application/json"}
        with _doing(self.endpoint, f"writing {self.endpoint.key(key)}"):
            self.client.put_object(
                Bucket=self.endpoint.bucket, Key=self.endpoint.key(key), Body=body, **extra
            )

    def remove(self, keys: Sequence[str]) -> None:
        """Delete ``prefix + key`` for each of ``keys``, 1,000 per request."""
        full = [self.endpoint.key(k) for k in keys]
        for start in range(0, len(full), _DELETE_BATCH):
            batch = full[start : start + _DELETE_BATCH]
            with _doing(self.endpoint, f"deleting {len(batch)} objects"):
                answer = self.client.delete_objects(
                    Bucket=self.endpoint.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            failed = answer.get("Errors") or []
            if failed:
                first = failed[0]
                raise PermissionDenied(
                    f"{self.endpoint.location} refused to delete {len(failed)} objects, "
                    f"{first.get('Key')!r} first: {first.get('Code')} {first.get('Message', '')}"
                )

    def listing(self) -> dict[str, tuple[int, str]]:
        """Every object under the prefix but Slipway's own: path (key without the prefix)
        -> (size, ETag). Keys ending in "/" (folder markers) are left out."""
        return {path: (size, etag) for path, size, etag, _ in self.objects()}

    def objects(self) -> Iterator[tuple[str, int, str, float | None]]:
        """The objects of ``listing``, page by page (ListObjectsV2, 1,000 keys a page), as
        (path, size in bytes, ETag, LastModified in epoch seconds)."""
        paginator = self.client.get_paginator("list_objects_v2")
        with _doing(self.endpoint, f"listing the bucket {self.endpoint.bucket}"):
            for page in paginator.paginate(
                Bucket=self.endpoint.bucket, Prefix=self.endpoint.prefix
            ):
                for item in page.get("Contents", []):
                    path = str(item["Key"])[len(self.endpoint.prefix) :]
                    if not path or path.endswith("/") or path.startswith(META_PREFIX):
                        continue
                    modified = item.get("LastModified")
                    yield (
                        path,
                        int(item["Size"]),
                        str(item["ETag"]),
                        modified.timestamp() if modified is not None else None,
                    )

    def check_access(self) -> int:
        """List at most one object: the bucket exists and the keys may list it. Answers
        the number of objects found (0 or 1). Raises the errors of ``_error``."""
        with _doing(self.endpoint, f"listing the bucket {self.endpoint.bucket}"):
            answer = self.client.list_objects_v2(
                Bucket=self.endpoint.bucket, Prefix=self.endpoint.prefix, MaxKeys=1
            )
        return int(answer.get("KeyCount", 0))


def headers(endpoint: S3Endpoint, path: str, content: bytes | None = None) -> dict[str, Any]:
    """The PutObject arguments a file of the build gets: ContentType by its extension
    (mimetypes; ``application/gzip`` for ``.gz``, ``application/octet-stream`` when unknown),
    the rules' ACL, StorageClass and
    CacheControl, and, for ``content`` given here, its SHA-256 in the metadata."""
    guessed, encoding = mimetypes.guess_type(path, strict=False)
    if encoding is not None:
        # A compressed file (site.css.gz) is served as the file it is: a Content-Encoding
        # would have browsers unpack downloads (.tar.gz) behind the user's back.
        guessed = "application/gzip" if encoding == "gzip" else None
    extra: dict[str, Any] = {"ContentType": guessed or "application/octet-stream"}
    for rule in endpoint.rules:
        if not rule.matches(path):
            continue
        if rule.acl:
            extra["ACL"] = rule.acl
        if rule.storage_class:
            extra["StorageClass"] = rule.storage_class
        if rule.cache_control:
            extra["CacheControl"] = rule.cache_control
    if content is not None:
        extra["Metadata"] = {"slipway-sha256": hashlib.sha256(content).hexdigest()}
    return extra


@dataclass(frozen=True)
class Probe:
    """What "Test connection" found: objects under the prefix (0 or 1: it lists one), and
    that a test object could be written and deleted there."""

    objects: int
    writable: bool


def probe(endpoint: S3Endpoint) -> Probe:
    """List the bucket under the prefix, write ``.slipway/connection-test`` and delete it.
    Raises AuthenticationRefused, BucketNotFound, PermissionDenied, InvalidInput (s3_region),
    HostUnreachable, TransferFailed."""
    bucket = Bucket(endpoint)
    objects = bucket.check_access()
    bucket.write(PROBE_KEY, b"Slipway connection test\n")
    bucket.remove([PROBE_KEY])
    return Probe(objects=objects, writable=True)


# --------------------------------------------------------------------------- the lock


def _lock_values(bucket: Bucket) -> dict[str, str] | None:
    body = bucket.read(LOCK_KEY)
    if body is None:
        return None
    values: dict[str, str] = {}
    for line in body.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key not in values:
            values[key] = value
    return values


def take_lock(
    bucket: Bucket,
    *,
    owner: str,
    holder: str,
    stale_after: int,
    owner_finished: Callable[[str], bool],
) -> tuple[str, ...]:
    """Write ``.slipway/lock`` naming ``owner``, unless another deployment holds it: a lock
    of this owner, of a finished deployment, older than ``stale_after`` seconds or naming no
    owner is taken over. S3 has no rename and not every S3-compatible service a conditional
    write, so two takers at the same instant could both win: the database already lets only
    one deployment at a time work on a server; this lock keeps out other Slipway installs and
    says who deploys. Answers notes for the log; raises LockHeld naming the holder."""
    values = _lock_values(bucket)
    note = ""
    if values is not None:
        found = values.get("owner", "")
        age = max(0, int(time.time()) - int(values.get("at", "0") or 0))
        if found == owner:
            pass
        elif not found:
            note = "Broke a lock without an owner"
        elif not found.endswith(LEFT_RUNNING_SUFFIX) and owner_finished(found):
            note = f"Took over the lock of {found}, which has finished"
        elif age > stale_after:
            note = f"Took over a stale lock of {found} ({age} s old)"
        else:
            error = LockHeld(
                f"{bucket.endpoint.location} is locked by another deployment: "
                f"{values.get('holder') or found} since {values.get('since', '?')}. If nothing "
                f"is deploying, delete {bucket.endpoint.key(LOCK_KEY)} from the bucket."
            )
            error.owner = found
            raise error
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    body = (
        f"owner={owner}\nholder={' '.join(holder.split())}\nsince={since}\nat={int(time.time())}\n"
    )
    bucket.write(LOCK_KEY, body.encode())
    return (note,) if note else ()


def read_lock(bucket: Bucket) -> release.LockInfo | None:
    """Who holds ``.slipway/lock`` (owner "" when it names none); None if unlocked."""
    values = _lock_values(bucket)
    if values is None:
        return None
    return release.LockInfo(
        owner=values.get("owner", ""),
        holder=values.get("holder", ""),
        since=values.get("since", ""),
        age_seconds=max(0, int(time.time()) - int(values.get("at", "0") or 0)),
    )


def break_lock(bucket: Bucket, *, owner: str) -> bool:
    """Delete the lock if ``owner`` holds it. True when deleted."""
    values = _lock_values(bucket)
    if values is None or values.get("owner", "") != owner:
        return False
    bucket.remove([LOCK_KEY])
    return True


# --------------------------------------------------------------------------- deploying


def deliver(
    spec: DeploySpec,
    server: ServerSpec,
    output: BuildOutput,
    reporter: Reporter,
    result: ServerResult,
    *,
    rollback_to: str = "",
) -> None:
    """Bring ``server.s3``'s bucket and prefix to ``output``: lock, read the manifest and
    listing kept there, upload what the change set and the drift since the last deployment
    say, write config files, then delete what is gone, then write the manifest and a new
    listing, unlock. ``rollback_to``: the name of the earlier release ``output`` is a build
    of (said in the log: a bucket has no symlink to switch back, so the difference is
    uploaded again).

    Raises UserError for what a bucket cannot give (``ftp.refusals``, a symlink in the
    build), and the errors of ``_error`` (AuthenticationRefused, BucketNotFound,
    PermissionDenied, HostUnreachable, TransferFailed) and LockHeld."""
    from builds.engine.build import generated_rules
    from builds.engine.rollout import drifted_paths, with_drift

    endpoint = server.s3
    assert endpoint is not None
    problems = refusals(spec, server, kind="an S3 bucket", protocol="S3")
    if problems:
        raise UserError("; ".join(problems))
    manifest = output.manifest
    links = [p for p in manifest if manifest[p].kind == "symlink"]
    if links:
        raise UserError(
            f"{server.name} is an S3 bucket, which has no symlinks; the build has "
            f"{len(links)}: {', '.join(display_path(p) for p in links[:5])}"
        )

    def log(text: str) -> None:
        reporter.log("system", text, server.id)

    with reporter.step("connect", server.id):
        bucket = Bucket(endpoint)
        bucket.check_access()
    owner = lock_owner(spec.deployment_id)
    locked = False
    try:
        for note in take_lock(
            bucket,
            owner=owner,
            holder=f"Slipway deployment #{spec.deployment_id} by {spec.deployer or 'unknown'}",
            stale_after=spec.lock_stale_after,
            owner_finished=spec.lock_owner_finished,
        ):
            log(note)
        locked = True
        root = release.validate_deploy_path(server.deploy_path)
        variables = in_place_variables(spec, server, root, output.revision)
        with reporter.step("transfer", server.id):
            old = None if spec.full else _remote_manifest(bucket) or server.live_manifest
            generated = generated_rules(spec.build)
            drifted: tuple[str, ...] = ()
            if old is not None:
                drifted = _drift(bucket)
            prepared = release.Prepared(live=None, copied=True, drifted=drifted)
            changes = with_drift(diff(old, manifest), prepared, manifest, generated)
            shown = drifted_paths(prepared, generated)
            refuse_drift(spec.on_drift, shown, server=server.name, where="the bucket")
            if shown:
                log(
                    f"{len(shown)} objects were changed in the bucket since the last deployment "
                    f"finished; they are restored: "
                    f"{', '.join(display_path(p) for p in shown[:5])}"
                )
            if rollback_to:
                log(
                    f"Rolling back to {rollback_to}: a bucket has no symlink to switch, so the "
                    "files that differ from that release's manifest are uploaded again and the "
                    "objects it did not have are deleted"
                )
            result.changes = changes
            log(f"{changes.summary()} (objects in {endpoint.location})")
            files = [p for p in changes.paths_to_send if manifest[p].kind == "file"]
            _upload(bucket, output.root, manifest, files, reporter, server.id)
            for config in spec.config_files:
                if config.server_ids and server.id not in config.server_ids:
                    continue
                path = release.validate_relative_path(config.path, "config_files")
                bucket.write(path, substitute(config.body, variables).encode(), path)
            # Deleted only now: until every new object is there, the old ones it replaces
            # may still be linked to by pages being served.
            # Folders are no objects: only what was a file, or appeared in the bucket.
            gone = [
                p
                for p in changes.deleted
                if (old is not None and p in old and old[p].kind != "dir")
                or (p in drifted and p not in manifest)
            ]
            if gone:
                log(f"Deleting {len(gone)} objects the build no longer has")
                bucket.remove(gone)
            if not files and not gone:
                log("Nothing changed")
            bucket.write(MANIFEST_KEY, manifest.to_json())
            bucket.write(LISTING_KEY, json.dumps(bucket.listing(), sort_keys=True).encode())
        result.manifest = manifest
        # No release directory: the name records the revision that went live (a rollback
        # puts the earlier release's own name back).
        result.release = rollback_to or release.release_name(output.revision, spec.started_at)
    finally:
        if locked:
            with contextlib.suppress(Exception):
                break_lock(bucket, owner=owner)


def _remote_manifest(bucket: Bucket) -> Manifest | None:
    body = bucket.read(MANIFEST_KEY)
    if body is None:
        return None
    try:
        manifest = Manifest.from_json(body)
        # Others can write there: a path leaving the prefix would have us delete outside
        # it. Such a manifest is ignored (full upload).
        for path in manifest:
            release.validate_relative_path(path, "path")
    except (ValueError, EngineError):
        return None
    return manifest


def drift(endpoint: S3Endpoint, *, release: str, manifest: Manifest | None) -> DriftReport:
    """What changed in the bucket since the deployment of ``release`` finished: the
    objects now listed against the listing it recorded (``LISTING_KEY``: size and ETag), or
    when there is none against ``manifest`` (paths and sizes). Read only, no lock taken.
    Raises the errors of ``_error``."""
    bucket = Bucket(endpoint)
    body = bucket.read(LISTING_KEY)
    recorded: dict[str, tuple[int, str]] | None = None
    if body is not None:
        try:
            recorded = {str(k): (int(v[0]), str(v[1])) for k, v in json.loads(body).items()}
        except (ValueError, TypeError, IndexError, AttributeError, KeyError):
            recorded = None
    return report_from_listings(
        release=release, now=bucket.objects(), recorded=recorded, manifest=manifest
    )


def _drift(bucket: Bucket) -> tuple[str, ...]:
    """Objects whose size or ETag is not what the listing taken at the end of the last
    deployment says, objects gone and objects added since."""
    body = bucket.read(LISTING_KEY)
    if body is None:
        return ()
    try:
        recorded = {str(k): (int(v[0]), str(v[1])) for k, v in json.loads(body).items()}
    except (ValueError, TypeError, IndexError, AttributeError, KeyError):
        return ()
    now = bucket.listing()
    changed = {p for p, facts in recorded.items() if now.get(p) != facts}
    changed |= set(now) - set(recorded)
    safe: list[str] = []
    for path in sorted(changed):
        try:
            safe.append(release.validate_relative_path(path, "path"))
        except InvalidInput:
            continue
    return tuple(safe)


class _Done(BaseSubscriber):  # type: ignore[misc]
    """Counts finished uploads for the progress bar."""

    def __init__(self, on_done: Callable[[], None]) -> None:
        self._on_done = on_done

    def on_done(self, future: Any, **kwargs: Any) -> None:
        self._on_done()


def _upload(
    bucket: Bucket,
    source_root: Path,
    manifest: Manifest,
    files: Sequence[str],
    reporter: Reporter,
    server_id: int,
) -> None:
    """Send ``files`` through one TransferManager: multipart at the endpoint's threshold,
    at most ``parallel_uploads`` requests in flight over all of them."""
    if not files:
        return
    endpoint = bucket.endpoint
    config = TransferConfig(
        multipart_threshold=endpoint.multipart_threshold,
        multipart_chunksize=endpoint.multipart_chunksize,
        max_concurrency=endpoint.parallel_uploads,
        use_threads=True,
    )
    total_bytes = sum(manifest[p].size for p in files)
    done = {"files": 0, "bytes": 0}
    lock = threading.Lock()
    last_report = [0.0]

    def finished(path: str) -> Callable[[], None]:
        def count() -> None:
            with lock:
                done["files"] += 1
                done["bytes"] += manifest[path].size
                now = time.monotonic()
                if now - last_report[0] > 0.25 or done["files"] == len(files):
                    last_report[0] = now
                    reporter.progress(
                        server_id, done["files"], len(files), done["bytes"], total_bytes
                    )

        return count

    with _doing(endpoint, "uploading"):
        manager = create_transfer_manager(bucket.client, config)
    with manager:
        futures: list[tuple[str, Any]] = []
        for path in files:
            extra = headers(endpoint, path)
            extra["Metadata"] = {"slipway-sha256": manifest[path].digest}
            futures.append(
                (
                    path,
                    manager.upload(
                        str(source_root / path),
                        endpoint.bucket,
                        endpoint.key(path),
                        extra_args=extra,
                        subscribers=[_Done(finished(path))],
                    ),
                )
            )
        for path, future in futures:
            reporter.check_cancelled()
            with _doing(endpoint, f"uploading {display_path(path)}"):
                future.result()


def spec_summary(endpoint: S3Endpoint) -> Mapping[str, str]:
    """The endpoint's settings as shown by Test connection (no secret)."""
    return {
        "endpoint": endpoint.url,
        "bucket": endpoint.bucket,
        "prefix": endpoint.prefix,
        "region": endpoint.region,
        "addressing": "path-style" if endpoint.path_style else "virtual-hosted-style",
        "access_key_id": masked_key_id(endpoint.access_key_id.strip()),
    }
