"""The project's repository on the worker: input checks, a bare mirror, exports of one revision.

Every git command runs from an argument list (never a shell), and every value a user typed
either sits after ``--end-of-options`` / ``--`` or has been validated so it cannot start with
``-``. Credentials never reach ``.git/config``, the process list or a log line.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Literal
from urllib.parse import SplitResult, urlsplit, urlunsplit

from builds.engine import ssh
from builds.engine.errors import (
    EngineError,
    FetchTimedOut,
    HostKeyMismatch,
    HostKeyNotTrusted,
    InternalError,
    InvalidInput,
    LfsUnavailable,
    RepositoryError,
    RevisionNotFound,
)
from builds.engine.manifest import display_path

LineCallback = Callable[[str], None]
Transport = Literal["https", "http", "ssh", "git", "file"]

MAX_REF_LENGTH = 255
MAX_URL_LENGTH = 2048

_HEX_SHA = re.compile(r"[0-9a-fA-F]{7,40}")
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Git hands "<transport>::<address>" to git-remote-<transport> (ext:: runs a command).
_TRANSPORT_HELPER_PREFIX = re.compile(r"[A-Za-z0-9+.-]*::")
_URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_SCP_LIKE = re.compile(
    r"(?:(?P<user>[A-Za-z0-9._~+-]+)@)?"
    r"(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\])"
    r":(?P<path>[^:].*)"
)
_SCHEME_TRANSPORTS: dict[str, Transport] = {
    "https": "https",
    "http": "http",
    "ssh": "ssh",
    "git+ssh": "ssh",
    "ssh+git": "ssh",
    "git": "git",
    "file": "file",
}
_CREDENTIALS_IN_TEXT = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
REDACTED = "***"
# Replacing a one-letter "secret" everywhere would shred log lines and hide nothing.
_MIN_REDACTED_SECRET_LENGTH = 4

# Without these, a missing network turns a fetch into a hang instead of an error.
_SSH_TIMEOUT_OPTIONS = ("-o", "ConnectTimeout=30", "-o", "ServerAliveInterval=15")
_HTTP_LOW_SPEED_CONFIG = (("http.lowSpeedLimit", "1000"), ("http.lowSpeedTime", "60"))
# git archive honours export-ignore / export-subst from the archived tree; a deploy must get
# the tree exactly as committed (export-ignore is applied afterwards, as an exclusion:
# Mirror.export_ignored and build.exclude_rules).
# Attributes that would change the bytes written (line endings, $Id$, filters, encodings,
# export-ignore/subst) are all switched off: a checkout or an export holds the committed bytes.
# The workspace uses the same list. `!attr` unsets; `-working-tree-encoding` would be invalid.
NEUTRAL_ATTRIBUTES = (
    "* -text !eol -crlf -ident !filter !working-tree-encoding -export-ignore -export-subst\n"
)
_STDERR_TAIL_LINES = 8
_FULL_SHA = re.compile(r"[0-9a-f]{40}")
# Git LFS pointer files (https://github.com/git-lfs/git-lfs/blob/main/docs/spec.md) are
# under 1024 bytes, start with the version line and name the object by its SHA-256.
_LFS_POINTER_MAX_BYTES = 1024
_LFS_POINTER_VERSION = "version https://git-lfs.github.com/spec/v1"
_LFS_OID = re.compile(r"oid sha256:([0-9a-f]{64})")
#: The default wall-clock limit of one fetch, in seconds (SLIPWAY_FETCH_TIMEOUT sets it).
DEFAULT_FETCH_TIMEOUT_SECONDS = 900.0
# How often a running fetch looks at its deadline and asks whether it was cancelled.
_FETCH_POLL_SECONDS = 0.5


# --------------------------------------------------------------------------- validation


def validate_ref(ref: str, field: str = "revision") -> str:
    """Return ``ref`` if it is a hex SHA (7-40 digits) or a branch/tag name git accepts.

    The rule is git's own (``git check-ref-format --branch``: no space, control character,
    ``..``, ``~ ^ : ? * [ \\``, ``@{``, ``.lock`` ending...), so ``feature/ünïcode``,
    ``a+b`` or ``fix;typo`` are accepted: a ref only ever reaches git as one argument after
    ``--end-of-options`` or as ``refs/heads/<name>``, and build and SSH commands get it as
    data (``$SLIPWAY_VAR_branch``, see variables.py). On top of git's rule, a leading ``-``
    (read as an option by older tools) and anything longer than ``MAX_REF_LENGTH``
    characters are refused. Raises InvalidInput naming ``field``.
    """
    if not ref:
        raise InvalidInput(field, "is empty.")
    if len(ref) > MAX_REF_LENGTH:
        raise InvalidInput(field, f"is longer than {MAX_REF_LENGTH} characters.")
    if ref.startswith("-"):
        raise InvalidInput(field, f"'{_printable(ref)}' cannot start with '-'.")
    if _HEX_SHA.fullmatch(ref):
        return ref
    if _CONTROL_OR_SPACE.search(ref):
        raise InvalidInput(
            field, f"'{_printable(ref)}' must not contain spaces or control characters."
        )
    if ref == "@" or not _git_accepts_branch_name(ref):
        raise InvalidInput(
            field,
            f"'{ref}' is not a valid branch, tag or commit SHA (git refuses '..', '~', '^', "
            "':', '?', '*', '[', '\\', '@{', a leading '.' or a trailing '.lock' in names).",
        )
    return ref


def _git_accepts_branch_name(name: str) -> bool:
    # The name is the argument of --branch, so git can never read it as an option; cwd="/"
    # keeps git from picking up whatever repository the worker happens to run in.
    result = subprocess.run(
        ["git", "check-ref-format", "--branch", name],
        cwd="/",
        env=_base_environment(),
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


def validate_repository_url(url: str, *, allow_local: bool) -> str:
    """Return ``url`` if git may fetch from it; refuse command-running and local forms."""
    _transport_of(url, allow_local=allow_local)
    return url


def _transport_of(url: str, *, allow_local: bool) -> Transport:
    if not url:
        raise InvalidInput("repository_url", "is empty.")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidInput("repository_url", f"is longer than {MAX_URL_LENGTH} characters.")
    if _TRANSPORT_HELPER_PREFIX.match(url):
        raise InvalidInput(
            "repository_url",
            "transport helpers such as 'ext::' are not allowed; use an https://, ssh:// "
            "or git@host:path URL.",
        )
    if _CONTROL_OR_SPACE.search(url):
        raise InvalidInput("repository_url", "must not contain spaces or control characters.")
    if url.startswith("-"):
        raise InvalidInput("repository_url", "cannot start with '-'.")
    scheme = _URL_SCHEME.match(url)
    if scheme:
        return _transport_of_scheme_url(url, scheme.group(1).lower(), allow_local=allow_local)
    # Like git: a ":" before any "/" makes it scp-like SSH, otherwise it is a local path.
    if _SCP_LIKE.fullmatch(url):
        return "ssh"
    return _transport_of_local_path(url, allow_local=allow_local)


def _transport_of_scheme_url(url: str, scheme: str, *, allow_local: bool) -> Transport:
    transport = _SCHEME_TRANSPORTS.get(scheme)
    if transport is None:
        raise InvalidInput(
            "repository_url",
            f"'{scheme}://' is not supported; use https://, ssh://, git:// or git@host:path.",
        )
    parts = urlsplit(url)
    if transport == "file":
        if not allow_local:
            raise InvalidInput("repository_url", "local repositories (file://) are not allowed.")
        return transport
    host = parts.hostname or ""
    if not host:
        raise InvalidInput("repository_url", "needs a host name, e.g. https://host/owner/repo.")
    if host.startswith("-"):
        raise InvalidInput("repository_url", "the host name cannot start with '-'.")
    if (parts.username or "").startswith("-"):
        raise InvalidInput("repository_url", "the user name cannot start with '-'.")
    return transport


def ssh_host_of(url: str) -> tuple[str, int]:
    """(host name, port) of an ``ssh://`` or scp-like (``git@host:path``) repository URL,
    as ssh connects to it (brackets of an IPv6 address removed; port 22 unless given)."""
    if _URL_SCHEME.match(url):
        parts = urlsplit(url)
        try:
            port = parts.port or 22
        except ValueError:
            raise InvalidInput("repository_url", "has a port that is not a number.") from None
        return parts.hostname or "", port
    match = _SCP_LIKE.fullmatch(url)
    if match is None:
        raise InvalidInput("repository_url", "is not an ssh:// or git@host:path address.")
    return match["host"].strip("[]"), 22


def _transport_of_local_path(url: str, *, allow_local: bool) -> Transport:
    if not allow_local:
        raise InvalidInput(
            "repository_url",
            "local paths are not allowed; use https://host/owner/repo.git or git@host:path.",
        )
    if not url.startswith("/"):
        raise InvalidInput("repository_url", "a local repository needs an absolute path.")
    return "file"


def redact_url(url: str) -> str:
    """Hide the password (and an https user, which is often a token) for logs and errors."""
    scheme = _URL_SCHEME.match(url)
    if not scheme:
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, has_password, _ = userinfo.partition(":")
    if has_password:
        userinfo = f"{user}:{REDACTED}"
    elif scheme.group(1).lower() in ("https", "http"):
        userinfo = REDACTED
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{hostport}"))


def _redact_text(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return _CREDENTIALS_IN_TEXT.sub(lambda match: f"{match['scheme']}{REDACTED}@", text)


def _printable(value: str) -> str:
    return _CONTROL.sub("?", value[:80])


def resolve_submodule_url(base: str, url: str) -> str:
    """A submodule URL as git reads it: ``./x`` and ``../x`` are relative to ``base``, the
    superproject's URL (each ``../`` drops one path segment of it: ``../lib.git`` beside
    ``https://host/acme/shop.git`` is ``https://host/acme/lib.git``); any other URL is kept.

    Raises InvalidInput (field ``submodule``) when the ``../`` climb above the host."""
    if not url.startswith(("./", "../")):
        return url
    resolved = base.rstrip("/")
    rest = url
    while rest.startswith(("./", "../")):
        if rest.startswith("./"):
            rest = rest[2:]
            continue
        rest = rest[3:]
        resolved = _parent_url(resolved, url)
    return f"{resolved}{'' if resolved.endswith(':') else '/'}{rest}"


def _parent_url(url: str, relative: str) -> str:
    scheme = _URL_SCHEME.match(url)
    floor = len(scheme.group(0)) if scheme else 0
    if scheme:
        first_slash = url.find("/", floor)
        floor = len(url) if first_slash == -1 else first_slash
    cut = url.rfind("/")
    if cut > floor or (scheme and cut == floor and floor < len(url)):
        return url[:cut]
    scp = None if scheme else _SCP_LIKE.fullmatch(url)
    if scp is not None and scp["path"]:
        return url[: scp.start("path")]
    raise InvalidInput("submodule", f"'{relative}' leads above the repository's host ({url}).")


def _host_of(url: str, transport: Transport) -> tuple[str, int | None] | None:
    if transport == "file":
        return None
    if transport == "ssh":
        return ssh_host_of(url)
    parts = urlsplit(url)
    return (parts.hostname or "", parts.port)


def _has_attributes_file(paths: Iterable[str]) -> bool:
    """Whether a tree's paths include a ``.gitattributes`` (the only source of attributes
    for a mirror's revision: info/attributes and the worker's config are neutralised)."""
    return any(path == ".gitattributes" or path.endswith("/.gitattributes") for path in paths)


def _lfs_object_id(content: bytes) -> str | None:
    """The object id of a Git LFS pointer file (spec v1), or None for any other content."""
    lines = content.decode("utf-8", errors="replace").splitlines()
    if not lines or lines[0] != _LFS_POINTER_VERSION:
        return None
    for line in lines[1:]:
        match = _LFS_OID.fullmatch(line)
        if match:
            return match.group(1)
    return None


def validate_subdirectory(subdirectory: str) -> str:
    """Return the subdirectory in canonical ``a/b`` form: relative, without ``.``/``..``."""
    if _CONTROL.search(subdirectory):
        raise InvalidInput("subdirectory", "must not contain control characters.")
    if subdirectory.startswith("/"):
        raise InvalidInput("subdirectory", "must be a relative path such as 'app' or 'site/web'.")
    canonical = subdirectory.rstrip("/")
    if not canonical or any(part in ("", ".", "..") for part in canonical.split("/")):
        raise InvalidInput("subdirectory", "must not contain '.', '..' or empty segments.")
    return canonical


# --------------------------------------------------------------------------- commits


@dataclass(frozen=True)
class Commit:
    sha: str
    short_sha: str
    author: str
    email: str
    date: datetime
    message: str
    subject: str


# NUL cannot appear inside a commit message, so it separates fields and (with -z) commits.
_COMMIT_FORMAT = "%H%x00%h%x00%an%x00%ae%x00%aI%x00%B"
_COMMIT_FIELDS = 6


#: The date shown for a commit whose author date git prints but Python cannot hold.
_UNKNOWN_DATE = datetime(1970, 1, 1, tzinfo=UTC)


def _git_date(text: str) -> datetime | None:
    """An author date as git prints it (``%aI``), or None when no datetime can hold it.

    Git keeps whatever a commit says: a year past 9999 (``GIT_AUTHOR_DATE=@253402400000``,
    accepted by git commit and git fsck) or a zone of +99:59 or -24:00 from old imports. A
    zone Python refuses is dropped (the clock time read as UTC); a year it cannot hold, or a
    date git could not print at all (it prints the placeholder), is None."""
    text = text.strip()
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text[:19]).replace(tzinfo=UTC)
    except ValueError:
        return None


def _parse_commits(output: bytes) -> list[Commit]:
    fields = output.decode("utf-8", errors="replace").split("\0")
    commits = []
    for start in range(0, len(fields) - _COMMIT_FIELDS + 1, _COMMIT_FIELDS):
        sha, short_sha, author, email, date, message = fields[start : start + _COMMIT_FIELDS]
        message = message.strip("\n")
        commits.append(
            Commit(
                sha=sha.strip("\n"),
                short_sha=short_sha,
                author=author,
                email=email,
                date=_git_date(date) or _UNKNOWN_DATE,
                message=message,
                subject=message.split("\n", 1)[0],
            )
        )
    return commits


# --------------------------------------------------------------------------- the mirror


@dataclass(frozen=True)
class _GitResult:
    returncode: int
    stdout: bytes
    stderr: str


class Mirror:
    """A bare mirror of one project's repository on the worker.

    Branches are stored as local refs (``refs/heads/*``) and tags as ``refs/tags/*``, so a
    branch name, a tag or a SHA resolves the same way it would in the origin repository.

    SSH host keys are pinned like servers' (see ssh.py): ``host_key`` is the repository host's
    trusted key, ``"<type> <base64>"``. Without it an ssh fetch is refused (HostKeyNotTrusted,
    showing the key the host offers, to be trusted by an admin of the project); with it, ssh
    runs with ``StrictHostKeyChecking=yes`` against a known_hosts file holding that key only,
    and a host offering another key is refused (HostKeyMismatch, naming host:port and both
    fingerprints). The worker's own ~/.ssh/known_hosts is neither read nor written, so one
    project cannot vouch for a host on another project's behalf.

    One mirror should be fetched by one process at a time (callers lock per project): two
    concurrent fetches can fail on git's ref locks.

    Deadlines: a fetch that has not finished after ``fetch_timeout`` seconds (wall clock) is
    stopped and fails with FetchTimedOut, whatever the transport (a ``git://`` server that
    accepts and never answers included); http(s) also gives up on a transfer slower than 1 kB/s
    for 60 s, and ssh on a connection that takes 30 s or stops answering keep-alives. git runs
    in its own process group, and the whole group (remote helpers, ssh) is killed on a
    deadline, a cancellation or any other way out of ``fetch``.
    """

    def __init__(
        self,
        path: Path,
        url: str,
        *,
        ssh_private_key: str | None = None,
        https_token: str | None = None,
        allow_local: bool = False,
        host_key: str | None = None,
        fetch_timeout: float = DEFAULT_FETCH_TIMEOUT_SECONDS,
    ) -> None:
        self.path = path.absolute()
        self._fetch_timeout = fetch_timeout
        self._transport = _transport_of(url, allow_local=allow_local)
        self._allow_local = allow_local
        self._ssh_private_key = ssh_private_key
        self._host_key = host_key.strip() if host_key else None
        self.ssh_host = ssh_host_of(url) if self._transport == "ssh" else None
        self._fetch_url, self._https_username, self._https_secret = _split_credentials(
            url, self._transport, https_token
        )
        self.display_url = redact_url(url)
        # Within this object's life (one deployment): what a full SHA resolved to, and the
        # listing of a revision's tree. A commit and its tree never change once fetched.
        self._resolved: dict[str, str] = {}
        self._listings: dict[str, bytes] = {}
        self._secrets = tuple(
            secret
            for secret in (self._https_secret, https_token)
            if secret and len(secret) >= _MIN_REDACTED_SECRET_LENGTH
        )

    @property
    def known_hosts_path(self) -> Path:
        return self.path / "slipway_known_hosts"

    # -- fetching

    def fetch(
        self,
        on_line: LineCallback | None = None,
        *,
        check_cancelled: Callable[[], None] | None = None,
    ) -> None:
        """Create the mirror if needed, then bring every branch and tag up to date.

        ``check_cancelled`` is called about twice a second while git runs; whatever it raises
        (Cancelled) stops git's whole process group and propagates. Raises FetchTimedOut after
        the mirror's ``fetch_timeout`` seconds, RepositoryError when git fails."""
        self._check_host_key_pinned()
        self._ensure_initialised()
        self._git("config", "remote.origin.url", self._fetch_url)
        with self._transport_environment() as environment:
            # Explicit forced refspecs instead of --tags: a tag moved upstream must follow
            # (plain --tags refuses to clobber it), and --prune then drops deleted tags too.
            result = self._git_streaming(
                [
                    "fetch",
                    "--prune",
                    "--no-tags",
                    "--no-recurse-submodules",
                    "origin",
                    "+refs/heads/*:refs/heads/*",
                    "+refs/tags/*:refs/tags/*",
                ],
                environment=environment,
                on_line=on_line,
                check_cancelled=check_cancelled,
            )
        if result.returncode != 0:
            self._check_host_key_unchanged(result.stderr)
            raise RepositoryError(self._fetch_failure_message(result.stderr))

    def _check_host_key_pinned(self) -> None:
        if self.ssh_host is None or self._host_key:
            return
        hostname, port = self.ssh_host
        offered = ssh.probe_host_key(hostname, port)
        raise HostKeyNotTrusted(
            f"The repository's SSH host {ssh.format_address(hostname, port)} offered the host "
            f"key {offered.key_type} {offered.fingerprint}, which is not trusted yet. Compare it "
            "with `ssh-keygen -lf` on the Git server (or the fingerprints your Git host "
            "publishes), then an admin of the project trusts it in the project's repository "
            "settings."
        )

    def _check_host_key_unchanged(self, stderr: str) -> None:
        """After ssh refused the host: say which key it offers instead of the pinned one."""
        if self.ssh_host is None or not self._host_key:
            return
        if "host key verification failed" not in stderr.lower():
            return
        hostname, port = self.ssh_host
        try:
            offered = ssh.probe_host_key(hostname, port)
        except EngineError:
            return  # the host is gone now: the fetch's own error says enough
        pinned = ssh.public_key_fingerprint(self._host_key)
        if offered.fingerprint != pinned:
            raise HostKeyMismatch(ssh.format_address(hostname, port), pinned, offered.fingerprint)

    def _ensure_initialised(self) -> None:
        if not (self.path / "HEAD").is_file():
            self.path.mkdir(parents=True, exist_ok=True)
            created = _run_git(["init", "--bare", "--quiet", str(self.path)], environment=None)
            if created.returncode != 0:
                raise InternalError(f"Could not create the mirror {self.path}: {created.stderr}")
        attributes = self.path / "info" / "attributes"
        if not attributes.is_file() or attributes.read_text() != NEUTRAL_ATTRIBUTES:
            attributes.parent.mkdir(exist_ok=True)
            attributes.write_text(NEUTRAL_ATTRIBUTES)

    def _fetch_failure_message(self, stderr: str) -> str:
        tail = [line for line in stderr.splitlines() if line.strip()][-_STDERR_TAIL_LINES:]
        reason = _fetch_failure_reason(stderr)
        message = f"Could not fetch {self.display_url}: {reason}"
        if tail:
            message += "\n" + "\n".join(tail)
        return message

    @contextmanager
    def _transport_environment(
        self, extra_config: tuple[tuple[str, str], ...] = ()
    ) -> Iterator[dict[str, str]]:
        environment = _base_environment()
        allowed = ["https", "http", "ssh", "git"] + (["file"] if self._allow_local else [])
        environment["GIT_ALLOW_PROTOCOL"] = ":".join(allowed)
        config = list(_HTTP_LOW_SPEED_CONFIG)
        # An empty credential.helper resets the list, so no helper on the worker can store
        # (or supply) credentials for this project.
        config.append(("credential.helper", ""))
        # A redirect would send git to an address Slipway never checked (the outbound policy
        # checks the URL's own host before each fetch): no redirect is followed.
        config.append(("http.followRedirects", "false"))
        if self._https_secret is not None:
            config.append(("http.extraHeader", self._authorization_header()))
        config.extend(extra_config)
        _put_config_in_environment(environment, config)
        if self._transport != "ssh":
            yield environment
            return
        with _private_key_file(self._ssh_private_key) as key_path:
            environment["GIT_SSH_COMMAND"] = self._ssh_command(key_path)
            yield environment

    def _authorization_header(self) -> str:
        credentials = f"{self._https_username}:{self._https_secret}".encode()
        return "Authorization: Basic " + base64.b64encode(credentials).decode("ascii")

    def _ssh_command(self, key_path: Path | None) -> str:
        assert self.ssh_host is not None and self._host_key  # checked before fetching
        hostname, port = self.ssh_host
        pattern = hostname if port == 22 else f"[{hostname}]:{port}"
        self.known_hosts_path.write_text(f"{pattern} {self._host_key}\n")
        arguments = ["ssh", "-F", "/dev/null"]
        if key_path is not None:
            arguments += ["-i", str(key_path), "-o", "IdentitiesOnly=yes"]
        arguments += [
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "CheckHostIP=no",
            "-o",
            f"UserKnownHostsFile={self.known_hosts_path}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            *_SSH_TIMEOUT_OPTIONS,
        ]
        # Git runs GIT_SSH_COMMAND through a shell, hence the quoting of our own paths.
        return shlex.join(arguments)

    def remote_branches(self) -> list[str]:
        """The branch names the repository has now (``git ls-remote --heads``), sorted, with
        the same credentials, host key and protocols as ``fetch``, within ``fetch_timeout``.

        Raises HostKeyNotTrusted (an ssh host whose key is not pinned), FetchTimedOut, or
        RepositoryError when git cannot list them."""
        prefix = "refs/heads/"
        return sorted(
            ref[len(prefix) :] for ref in self.remote_refs("--heads") if ref.startswith(prefix)
        )

    def remote_refs(self, *options: str) -> dict[str, str]:
        """``{"refs/heads/main": "<40-hex SHA>", "refs/tags/v1^{}": ...}``: what `git
        ls-remote [options]` lists now (``--heads``, ``--tags``, or nothing for every ref),
        with the same credentials, host key, protocols, time limit and errors as
        ``remote_branches``."""
        self._check_host_key_pinned()
        self._ensure_initialised()
        with self._transport_environment() as environment:
            process = subprocess.Popen(
                ["git", f"--git-dir={self.path}", "ls-remote", *options, self._fetch_url],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=environment,
                start_new_session=True,  # so that the deadline stops ssh and helpers too
            )
            try:
                stdout, stderr_bytes = process.communicate(timeout=self._fetch_timeout)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                process.communicate()
                raise FetchTimedOut(
                    f"Listing the branches of {self.display_url} did not finish within "
                    f"{self._fetch_timeout:g} s (SLIPWAY_FETCH_TIMEOUT)."
                ) from None
            except BaseException:
                _kill_group(process)
                raise
        stderr = _redact_text(stderr_bytes.decode("utf-8", errors="replace"), self._secrets)
        if process.returncode != 0:
            self._check_host_key_unchanged(stderr)
            raise RepositoryError(self._fetch_failure_message(stderr))
        refs: dict[str, str] = {}
        for line in stdout.splitlines():
            sha, _tab, ref = line.partition(b"\t")
            refs[ref.decode("utf-8", errors="replace")] = sha.decode("ascii", errors="replace")
        return refs

    # -- reading

    def resolve(self, ref: str) -> str:
        """Return the full SHA of the commit a branch, tag or (abbreviated) SHA points to."""
        validate_ref(ref)
        if ref in self._resolved:
            return self._resolved[ref]
        sha = self._rev_parse(f"{ref}^{{commit}}")
        if sha is None:
            raise RevisionNotFound(f"Revision '{ref}' was not found in {self.display_url}")
        # Only a full SHA is remembered: a branch or tag moves with the next fetch.
        if ref == sha:
            self._resolved[ref] = sha
        return sha

    def _tree_listing(self, full_sha: str) -> bytes:
        """``git ls-tree -r -t -l -z`` of the revision (every file, folder and submodule,
        with blob sizes), read once per revision."""
        if full_sha not in self._listings:
            self._listings[full_sha] = self._git(
                "ls-tree", "-r", "-t", "-l", "-z", "--end-of-options", full_sha
            ).stdout
        return self._listings[full_sha]

    def branch_head(self, branch: str) -> str | None:
        validate_ref(branch, "branch")
        return self._rev_parse(f"refs/heads/{branch}^{{commit}}")

    def resolve_or_none(self, ref: str) -> str | None:
        """The full SHA, or None when the mirror does not have it (no error)."""
        try:
            return self.resolve(ref)
        except (RevisionNotFound, InvalidInput):
            return None

    def is_ancestor(self, older: str, newer: str) -> bool:
        """True when ``older`` is ``newer`` or in its history (both resolved first)."""
        first, second = self.resolve(older), self.resolve(newer)
        result = self._git("merge-base", "--is-ancestor", first, second, check=False)
        if result.returncode not in (0, 1):
            raise RepositoryError(
                f"git merge-base failed in the mirror for {first[:12]} and {second[:12]}"
            )
        return result.returncode == 0

    def _rev_parse(self, revision: str) -> str | None:
        if not self._exists():
            return None
        result = self._git(
            "rev-parse", "--verify", "--quiet", "--end-of-options", revision, check=False
        )
        sha = result.stdout.decode("ascii", errors="replace").strip()
        if result.returncode != 0 or not re.fullmatch(r"[0-9a-f]{40}", sha):
            return None
        return sha

    def commit_info(self, sha: str) -> Commit:
        full_sha = self.resolve(sha)
        output = self._git(
            "log", "-1", "-z", f"--format={_COMMIT_FORMAT}", "--end-of-options", full_sha, "--"
        ).stdout
        return _parse_commits(output)[0]

    def commits_between(self, old: str | None, new: str, limit: int = 100) -> list[Commit]:
        """Commits reachable from ``new`` but not from ``old``, newest first.

        An ``old`` revision that no longer exists (force-pushed away, garbage collected) is
        treated like None: the history is shown from ``new`` rather than failing the deploy.
        """
        new_sha = self.resolve(new)
        old_sha = (
            self._rev_parse(f"{validate_ref(old, 'old_revision')}^{{commit}}") if old else None
        )
        revisions = [new_sha] if old_sha is None else [new_sha, f"^{old_sha}"]
        output = self._git(
            "log",
            f"--max-count={limit}",
            "-z",
            f"--format={_COMMIT_FORMAT}",
            "--end-of-options",
            *revisions,
            "--",
        ).stdout
        return _parse_commits(output)

    def first_commit_time(self, old: str, new: str) -> datetime | None:
        """The earliest author date (timezone-aware) of the commits a deployment from ``old`` to
        ``new`` brings (``git log old..new``), the start of DORA's lead time for changes
        (docs/metrics.md). None when the range is empty, or when ``old`` no longer exists (a
        force-push, garbage collection): the range is unknown then, and a guess from the
        whole history would count years. Raises RepositoryError for an unknown ``new``.
        """
        new_sha = self.resolve(new)
        old_sha = self._rev_parse(f"{validate_ref(old, 'old_revision')}^{{commit}}")
        if old_sha is None:
            return None
        output = self._git(
            "log", "--format=%aI", "--end-of-options", new_sha, f"^{old_sha}", "--"
        ).stdout
        # A date no datetime holds (year 10000...) is left out, not a failed deployment.
        dates = [
            date
            for line in output.decode("ascii", errors="replace").split()
            if line and (date := _git_date(line)) is not None
        ]
        return min(dates) if dates else None

    def changed_paths(self, old: str | None, new: str) -> list[str]:
        """Paths that differ between two revisions; every path of ``new`` when old is None."""
        new_sha = self.resolve(new)
        if old is None:
            arguments = ["ls-tree", "-r", "-z", "--name-only", "--end-of-options", new_sha]
        else:
            old_sha = self.resolve(old)
            arguments = ["diff", "--name-only", "-z", "--no-renames", old_sha, new_sha, "--"]
        output = self._git(*arguments).stdout
        return [os.fsdecode(path) for path in output.split(b"\0") if path]

    # -- exporting

    def export(self, sha: str, dest: Path, subdirectory: str | None = None) -> None:
        """Make ``dest`` hold exactly the tree of one revision (or of one of its folders).

        Regular files keep their executable bit, symlinks stay symlinks (never followed while
        writing), submodules become empty folders as in a checkout without submodules
        (content.complete fills them).
        """
        full_sha = self.resolve(sha)
        tree = full_sha
        if subdirectory is not None:
            folder = validate_subdirectory(subdirectory)
            tree = f"{full_sha}:{folder}"
            if self._object_type(tree) != "tree":
                raise InvalidInput(
                    "subdirectory",
                    f"'{folder}' is not a folder in revision {full_sha[:12]}.",
                )
        _empty_directory(dest)
        self._archive_into(tree, dest)

    def export_ignored(self, sha: str) -> frozenset[str]:
        """The paths of one revision that ``.gitattributes`` marks ``export-ignore``, as
        ``git archive`` reads them: files and folders (a folder's contents go with it),
        relative to the top of the tree."""
        full_sha = self.resolve(sha)
        listing = self._tree_listing(full_sha)
        paths = []
        for entry in listing.split(b"\0"):
            if not entry:
                continue
            meta, _, raw_path = entry.partition(b"\t")
            # A folder is asked about as "path/": a pattern such as "tests/" names folders only.
            folder = meta.split()[1:2] == [b"tree"]
            paths.append(os.fsdecode(raw_path) + ("/" if folder else ""))
        if not _has_attributes_file(paths):
            return frozenset()
        values = self.attributes(full_sha, "export-ignore", paths)
        return frozenset(path.rstrip("/") for path, value in values.items() if value == "set")

    def read_file(self, sha: str, path: str, *, max_bytes: int) -> bytes | None:
        """The bytes of the file at ``path`` (from the top of the tree) in revision ``sha``,
        read from the mirror without a checkout (``git ls-tree``, then ``git cat-file``);
        None when the revision has nothing there. Raises InvalidInput naming ``path`` when it
        is not a regular file (a folder, a symbolic link, a submodule) or is larger than
        ``max_bytes``; RevisionNotFound for an unknown revision."""
        full_sha = self.resolve(sha)
        entry = self._git("ls-tree", "-l", "-z", "--full-tree", full_sha, path).stdout
        entry = entry.split(b"\0", 1)[0]
        if not entry:
            return None
        meta, _, _ = entry.partition(b"\t")
        mode, kind, obj, size = (part.decode("ascii") for part in meta.split())
        if kind != "blob" or mode not in ("100644", "100755"):
            what = {"tree": "a folder", "commit": "a submodule"}.get(kind, "a symbolic link")
            raise InvalidInput(path, f"is {what} in {full_sha[:12]}, not a file.")
        if int(size) > max_bytes:
            raise InvalidInput(
                path, f"is {int(size)} bytes in {full_sha[:12]}; the most read is {max_bytes}."
            )
        return self._git("cat-file", "blob", obj).stdout

    def attributes(self, sha: str, attribute: str, paths: list[str]) -> dict[str, str]:
        """``attribute`` of each of ``paths`` in revision ``sha``: "set", "unset",
        "unspecified" or its value (``filter`` → "lfs"), as ``git check-attr`` says.

        The attributes come from the revision's own ``.gitattributes`` files only; the
        mirror's neutral ``info/attributes`` and the worker's git config take no part (git
        reads them through a throwaway git dir and index borrowing the mirror's objects).
        """
        if not paths:
            return {}
        full_sha = self.resolve(sha)
        environment = {
            **_base_environment(),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
        }
        _put_config_in_environment(environment, [("core.attributesFile", os.devnull)])
        with tempfile.TemporaryDirectory(prefix="slipway-attributes-") as scratch:
            git_dir = Path(scratch) / "attributes.git"
            self._run_checked(
                ["init", "--bare", "--quiet", "--template=", str(git_dir)], environment
            )
            alternates = git_dir / "objects" / "info" / "alternates"
            alternates.parent.mkdir(parents=True, exist_ok=True)
            alternates.write_text(f"{self.path / 'objects'}\n")
            self._run_checked([f"--git-dir={git_dir}", "read-tree", full_sha], environment)
            checked = subprocess.run(
                # With --stdin, git takes no "--"; the attribute is one of ours, never typed.
                [
                    "git",
                    f"--git-dir={git_dir}",
                    "check-attr",
                    "--cached",
                    "--stdin",
                    "-z",
                    attribute,
                ],
                input=b"".join(os.fsencode(path) + b"\0" for path in paths),
                capture_output=True,
                env=environment,
                check=False,
            )
        if checked.returncode != 0:
            stderr = checked.stderr.decode("utf-8", errors="replace").strip()
            raise RepositoryError(f"git check-attr failed for {full_sha[:12]}: {stderr}")
        fields = checked.stdout.split(b"\0")
        return {
            os.fsdecode(fields[index]): os.fsdecode(fields[index + 2])
            for index in range(0, len(fields) - 2, 3)
        }

    # -- submodules and LFS

    def gitlinks(self, sha: str) -> dict[str, str]:
        """Submodule path -> the commit recorded for it in revision ``sha``."""
        output = self._tree_listing(self.resolve(sha))
        found: dict[str, str] = {}
        for record in output.split(b"\0"):
            header, _, path = record.partition(b"\t")
            fields = header.split()
            if len(fields) >= 3 and fields[0] == b"160000":
                found[os.fsdecode(path)] = fields[2].decode("ascii")
        return found

    def submodule_urls(self, sha: str) -> dict[str, str]:
        """Submodule path -> URL as written in the revision's ``.gitmodules`` (maybe relative)."""
        full_sha = self.resolve(sha)
        if self._object_type(f"{full_sha}:.gitmodules") != "blob":
            return {}
        result = self._git(
            "config", "--blob", f"{full_sha}:.gitmodules", "-z", "--list", check=False
        )
        if result.returncode != 0:
            raise RepositoryError(
                f"The .gitmodules of {full_sha[:12]} cannot be read: {result.stderr.strip()}"
            )
        names: dict[str, dict[str, str]] = {}
        for item in result.stdout.split(b"\0"):
            key, _, value = os.fsdecode(item).partition("\n")
            section, _, rest = key.partition(".")
            name, _, variable = rest.rpartition(".")
            if section == "submodule" and variable in ("path", "url"):
                names.setdefault(name, {})[variable] = value
        return {entry["path"]: entry.get("url", "") for entry in names.values() if "path" in entry}

    def has_commit(self, sha: str) -> bool:
        return self._rev_parse(f"{sha}^{{commit}}") == sha

    def fetch_commit(self, sha: str, on_line: LineCallback | None = None) -> None:
        """Fetch one commit no branch or tag holds (hosts allow it for reachable commits)."""
        if not _FULL_SHA.fullmatch(sha):
            raise InternalError(f"{sha!r} is not a full SHA.")
        with self._transport_environment() as environment:
            self._git_streaming(
                ["fetch", "--no-tags", "--no-recurse-submodules", "origin", sha],
                environment=environment,
                on_line=on_line,
            )

    def lfs_pointers(self, sha: str) -> dict[str, str]:
        """Path -> LFS object id of each file of revision ``sha`` that git-lfs would smudge:
        a blob that is an LFS pointer, at a path whose ``filter`` attribute is ``lfs``."""
        full_sha = self.resolve(sha)
        listing = self._tree_listing(full_sha)
        small: dict[str, str] = {}
        records = listing.split(b"\0")
        if not _has_attributes_file(os.fsdecode(r.partition(b"\t")[2]) for r in records):
            return {}  # no filter=lfs anywhere
        for record in records:
            header, _, path = record.partition(b"\t")
            fields = header.split()
            if (
                len(fields) == 4
                and fields[1] == b"blob"
                and fields[3].isdigit()
                and int(fields[3]) < _LFS_POINTER_MAX_BYTES
            ):
                small[os.fsdecode(path)] = fields[2].decode("ascii")
        if not small:
            return {}
        batch = subprocess.run(
            ["git", f"--git-dir={self.path}", "cat-file", "--batch"],
            input="".join(f"{blob}\n" for blob in small.values()).encode(),
            capture_output=True,
            env=_base_environment(),
            check=False,
        )
        if batch.returncode != 0:
            raise RepositoryError(f"git cat-file failed in the mirror for {full_sha[:12]}")
        contents: dict[str, bytes] = {}
        output = batch.stdout
        position = 0
        while position < len(output):
            header_end = output.index(b"\n", position)
            blob, _, size = output[position:header_end].decode("ascii").split(" ")
            start = header_end + 1
            contents[blob] = output[start : start + int(size)]
            position = start + int(size) + 1
        pointers = {
            path: oid
            for path, blob in small.items()
            if (oid := _lfs_object_id(contents.get(blob, b""))) is not None
        }
        filters = self.attributes(full_sha, "filter", sorted(pointers))
        return {path: oid for path, oid in pointers.items() if filters.get(path) == "lfs"}

    def fetch_lfs(self, sha: str, on_line: LineCallback | None = None) -> None:
        """Download the LFS objects of revision ``sha`` into the mirror (``lfs/objects``),
        from the LFS server of the mirror's remote (a file:// or local remote's own
        ``lfs/objects`` included), with the mirror's credentials and deadline.

        Raises LfsUnavailable when git-lfs is not installed, RepositoryError when it fails."""
        if shutil.which("git-lfs") is None:
            raise LfsUnavailable("git-lfs is not installed on the worker (Debian: git-lfs).")
        # The repository's own .lfsconfig could name any LFS server (lfs.url); git config
        # wins over it, so the endpoint git-lfs would derive from the URL is set here.
        with self._transport_environment((("lfs.url", self._lfs_endpoint()),)) as environment:
            result = self._git_streaming(
                ["lfs", "fetch", "origin", self.resolve(sha)],
                environment=environment,
                on_line=on_line,
            )
        if result.returncode != 0:
            tail = [line for line in result.stderr.splitlines() if line.strip()]
            raise RepositoryError(
                f"git lfs fetch from {self.display_url} failed: "
                + "\n".join(tail[-_STDERR_TAIL_LINES:])
            )

    def _lfs_endpoint(self) -> str:
        """The LFS server git-lfs derives from the repository URL (its documented default)."""
        url = self._fetch_url
        if self._transport == "file":
            return url if _URL_SCHEME.match(url) else Path(url).as_uri()
        if self._transport == "ssh":
            return url  # git-lfs asks the ssh host (git-lfs-authenticate) where to go
        if self._transport == "git":
            url = "https://" + url.removeprefix("git://")
        url = url.rstrip("/")
        return url + ("/info/lfs" if url.endswith(".git") else ".git/info/lfs")

    def lfs_object(self, oid: str) -> Path:
        """Where ``fetch_lfs`` keeps the object ``oid`` (a SHA-256 in hex)."""
        return self.path / "lfs" / "objects" / oid[:2] / oid[2:4] / oid

    def for_submodule(self, url: str) -> tuple[str, Mirror]:
        """The URL (a relative one resolved against this mirror's) and a mirror, beside this
        one's folder under ``submodules/``, for a submodule of this repository.

        The same rules as the repository's apply: the project's SSH key; its https token and
        the trusted host key only toward the same host; local paths only when allowed.
        Raises InvalidInput (field ``submodule``) for a URL git must not fetch from.
        """
        resolved = resolve_submodule_url(self._fetch_url, url)
        transport = _transport_of(resolved, allow_local=self._allow_local)
        digest = hashlib.sha256(resolved.encode()).hexdigest()[:24]
        submodules = self.path.parent / "submodules"
        same_host = _host_of(resolved, transport) == _host_of(self._fetch_url, self._transport)
        if transport == "ssh" and not (same_host and self._transport == "ssh"):
            raise InvalidInput(
                "submodule",
                f"{redact_url(resolved)} is an ssh address on another host than the "
                "repository's: only the repository's host has a trusted host key. Use an "
                "https:// URL (or a relative one) for this submodule.",
            )
        mirror = Mirror(
            submodules / f"{digest}.git",
            resolved,
            ssh_private_key=self._ssh_private_key,
            https_token=self._https_secret
            if same_host and transport in ("https", "http")
            else None,
            allow_local=self._allow_local,
            host_key=self._host_key if same_host and transport == "ssh" else None,
            fetch_timeout=self._fetch_timeout,
        )
        return resolved, mirror

    def _run_checked(self, arguments: list[str], environment: dict[str, str]) -> None:
        result = _run_git(arguments, environment=environment)
        if result.returncode != 0:
            stderr = _redact_text(result.stderr, self._secrets).strip()
            raise RepositoryError(f"Reading the revision's .gitattributes failed: {stderr}")

    def _object_type(self, revision: str) -> str | None:
        result = self._git("cat-file", "-t", "--end-of-options", revision, check=False)
        if result.returncode != 0:
            return None
        return result.stdout.decode("ascii", errors="replace").strip()

    def _archive_into(self, tree: str, dest: Path) -> None:
        process = subprocess.Popen(
            ["git", f"--git-dir={self.path}", "archive", "--format=tar", tree],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # The worker's own git config (a smudge filter, git-lfs) must not touch the export.
            env={
                **_base_environment(),
                "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_CONFIG_GLOBAL": os.devnull,
            },
        )
        if process.stdout is None or process.stderr is None:
            raise InternalError("git archive was started without pipes.")
        try:
            _extract_tar_stream(process.stdout, dest)
        finally:
            process.stdout.close()
            stderr = process.stderr.read().decode("utf-8", errors="replace")
            process.stderr.close()
            returncode = process.wait()
        if returncode != 0:
            raise RepositoryError(f"git archive failed for {tree}: {stderr.strip()}")

    # -- running git

    def _exists(self) -> bool:
        return (self.path / "HEAD").is_file()

    def _git(self, *arguments: str, check: bool = True) -> _GitResult:
        result = _run_git([f"--git-dir={self.path}", *arguments], environment=_base_environment())
        if check and result.returncode != 0:
            stderr = _redact_text(result.stderr, self._secrets)
            raise RepositoryError(f"git {arguments[0]} failed in the mirror: {stderr.strip()}")
        return result

    def _git_streaming(
        self,
        arguments: list[str],
        *,
        environment: dict[str, str],
        on_line: LineCallback | None,
        check_cancelled: Callable[[], None] | None = None,
    ) -> _GitResult:
        process = subprocess.Popen(
            ["git", f"--git-dir={self.path}", *arguments],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=environment,
            # Its own process group, so that a deadline or a cancel can stop git together
            # with its remote helpers and ssh.
            start_new_session=True,
        )
        if process.stderr is None:
            raise InternalError("git was started without a stderr pipe.")
        # A reader thread, so that waiting for a line never blocks the deadline and cancel checks.
        received: queue.Queue[bytes | None] = queue.Queue()
        reader = threading.Thread(
            target=_read_lines, args=(process.stderr, received), name="git-stderr", daemon=True
        )
        reader.start()
        deadline = time.monotonic() + self._fetch_timeout
        lines: list[str] = []
        try:
            while True:
                try:
                    raw_line = received.get(timeout=_FETCH_POLL_SECONDS)
                except queue.Empty:
                    raw_line = b""
                if raw_line is None:
                    break
                if raw_line:
                    # Progress meters rewrite themselves with \r (keep what they settle on);
                    # ssh ends its lines with \r\n.
                    text = raw_line.decode("utf-8", errors="replace").rstrip("\r\n")
                    line = _redact_text(text.split("\r")[-1], self._secrets)
                    lines.append(line)
                    if on_line is not None and line.strip():
                        on_line(line)
                if check_cancelled is not None:
                    check_cancelled()
                if time.monotonic() >= deadline:
                    _kill_group(process)
                    raise FetchTimedOut(
                        f"Fetching {self.display_url} did not finish within "
                        f"{self._fetch_timeout:g} s: the host accepted the connection but "
                        "stopped answering, or the transfer is too large for the limit "
                        "(SLIPWAY_FETCH_TIMEOUT)."
                    )
            return _GitResult(process.wait(), b"", "\n".join(lines))
        finally:
            _kill_group(process)
            reader.join(timeout=5)
            process.stderr.close()


def remote_refs(
    url: str,
    *,
    ssh_private_key: str | None = None,
    https_token: str | None = None,
    allow_local: bool = False,
    host_key: str | None = None,
    timeout: float = DEFAULT_FETCH_TIMEOUT_SECONDS,
) -> dict[str, str]:
    """Every ref of the repository at ``url`` and its SHA (see ``Mirror.remote_refs``, whose
    errors it raises), without touching any project's mirror."""
    with tempfile.TemporaryDirectory(prefix="slipway-ls-remote-") as scratch:
        mirror = Mirror(
            Path(scratch) / "mirror.git",
            url,
            ssh_private_key=ssh_private_key,
            https_token=https_token,
            allow_local=allow_local,
            host_key=host_key,
            fetch_timeout=timeout,
        )
        return mirror.remote_refs()


def remote_branches(
    url: str,
    *,
    ssh_private_key: str | None = None,
    https_token: str | None = None,
    allow_local: bool = False,
    host_key: str | None = None,
    timeout: float = DEFAULT_FETCH_TIMEOUT_SECONDS,
) -> list[str]:
    """The branch names of the repository at ``url`` (see ``Mirror.remote_branches``, whose
    errors it raises), without touching any project's mirror: for checking a branch name
    when it is saved."""
    with tempfile.TemporaryDirectory(prefix="slipway-ls-remote-") as scratch:
        mirror = Mirror(
            Path(scratch) / "mirror.git",
            url,
            ssh_private_key=ssh_private_key,
            https_token=https_token,
            allow_local=allow_local,
            host_key=host_key,
            fetch_timeout=timeout,
        )
        return mirror.remote_branches()


def _read_lines(stream: IO[bytes], received: queue.Queue[bytes | None]) -> None:
    try:
        for raw_line in stream:
            received.put(raw_line)
    except (OSError, ValueError):  # the pipe was closed under us: the fetch is being stopped
        pass
    finally:
        received.put(None)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """Kill git's whole process group and reap git; nothing once git has been reaped.

    Only while git is unreaped is its pid, the group's id, sure to be still ours."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()


# --------------------------------------------------------------------------- helpers


def _base_environment() -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    environment.update(
        {
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_PROTOCOL_FROM_USER": "0",
            "GIT_ALLOW_PROTOCOL": "https:http:ssh:git",
            "GIT_ASKPASS": "",
            "SSH_ASKPASS": "",
            "LC_ALL": "C",
        }
    )
    return environment


def _put_config_in_environment(environment: dict[str, str], config: list[tuple[str, str]]) -> None:
    # GIT_CONFIG_* (git >= 2.31) keeps values out of .git/config and out of `ps` output,
    # which `git -c key=value` would not.
    environment["GIT_CONFIG_COUNT"] = str(len(config))
    for index, (key, value) in enumerate(config):
        environment[f"GIT_CONFIG_KEY_{index}"] = key
        environment[f"GIT_CONFIG_VALUE_{index}"] = value


def _run_git(arguments: list[str], *, environment: Mapping[str, str] | None) -> _GitResult:
    result = subprocess.run(
        ["git", *arguments],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=dict(environment) if environment is not None else _base_environment(),
        check=False,
    )
    return _GitResult(
        result.returncode, result.stdout, result.stderr.decode("utf-8", errors="replace")
    )


def _split_credentials(
    url: str, transport: Transport, https_token: str | None
) -> tuple[str, str, str | None]:
    """Return (url without a password, https user name, secret to send in a header).

    A password written into the URL is moved into the Authorization header as well, so the
    URL stored in the mirror's config never carries it.
    """
    if transport not in ("https", "http"):
        return url, "", None
    parts = urlsplit(url)
    username = parts.username or ""
    secret = https_token if https_token is not None else parts.password
    if parts.password is not None or (https_token is not None and username):
        parts = _without_userinfo(parts)
    # GitHub wants "x-access-token" for app tokens and takes any name with a personal token;
    # GitLab and Bitbucket take any non-empty name with a token.
    return urlunsplit(parts), username or "x-access-token", secret


def _without_userinfo(parts: SplitResult) -> SplitResult:
    return parts._replace(netloc=parts.netloc.rpartition("@")[2])


def _fetch_failure_reason(stderr: str) -> str:
    lowered = stderr.lower()
    if "authentication failed" in lowered or "permission denied" in lowered:
        return "the repository refused our credentials (check the deploy key or token)."
    if "could not read username" in lowered or "terminal prompts disabled" in lowered:
        return "the repository asks for credentials we do not have (add a token or a key)."
    if "host key verification failed" in lowered:
        return "the SSH host key did not match the one recorded for this repository."
    if "not found" in lowered or "does not appear to be a git repository" in lowered:
        return "the repository was not found (or this key/token cannot see it)."
    if "could not resolve host" in lowered:
        return "the host name could not be resolved."
    if any(
        phrase in lowered
        for phrase in ("connection refused", "failed to connect", "timed out", "no route to host")
    ):
        return "could not connect to the host."
    return "git fetch failed."


@contextmanager
def _private_key_file(private_key: str | None) -> Iterator[Path | None]:
    if private_key is None:
        yield None
        return
    directory = Path(tempfile.mkdtemp(prefix="slipway-key-"))
    key_path = directory / "id"
    try:
        descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as key_file:
            # OpenSSH refuses a key file whose last line has no newline.
            key_file.write(private_key if private_key.endswith("\n") else private_key + "\n")
        yield key_path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _empty_directory(dest: Path) -> None:
    if dest.is_symlink():
        raise InternalError(f"Export destination {dest} is a symlink.")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)


def _extract_tar_stream(stream: IO[bytes], dest: Path) -> None:
    """Write the members of a git-archive tar under ``dest`` without trusting their names."""
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for member in archive:
            target = dest.joinpath(*_safe_member_parts(member.name))
            _ensure_real_parent(dest, target)
            if member.isdir():
                target.mkdir(exist_ok=True)
            elif member.issym():
                os.symlink(member.linkname, target)
            elif member.isfile():
                source = archive.extractfile(member)
                if source is None:
                    raise RepositoryError(
                        f"Unreadable file in the repository: {display_path(member.name)}"
                    )
                _write_regular_file(source, target, executable=bool(member.mode & 0o111))
            else:
                raise RepositoryError(
                    f"Unexpected entry type in the repository: {display_path(member.name)}"
                )


def _safe_member_parts(name: str) -> list[str]:
    parts = [part for part in name.rstrip("/").split("/")]
    if not name or name.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise RepositoryError(
            f"Refusing an unsafe path in the repository archive: {display_path(name)!r}"
        )
    return parts


def _ensure_real_parent(dest: Path, target: Path) -> None:
    # Members come in tree order, so every parent was created by us; a symlink here would
    # mean an earlier member tried to redirect a later one outside dest.
    parent = target.parent
    while parent != dest:
        if parent.is_symlink():
            raise RepositoryError(
                f"Refusing to write through a symlink: {display_path(str(target))}"
            )
        parent = parent.parent
    target.parent.mkdir(parents=True, exist_ok=True)


def _write_regular_file(source: IO[bytes], target: Path, *, executable: bool) -> None:
    mode = 0o755 if executable else 0o644
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    descriptor = os.open(target, flags, mode)
    with os.fdopen(descriptor, "wb") as output:
        shutil.copyfileobj(source, output, 1024 * 1024)
    # The umask may have narrowed the mode given to open().
    os.chmod(target, mode)


__all__ = [
    "Commit",
    "LineCallback",
    "Mirror",
    "redact_url",
    "ssh_host_of",
    "validate_ref",
    "validate_repository_url",
    "validate_subdirectory",
]
