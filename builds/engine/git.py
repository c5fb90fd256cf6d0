"""The project's repository on the worker: input checks, a bare mirror, exports of one revision.

Every git command runs from an argument list (never a shell), and every value a user typed
either sits after ``--end-of-options`` / ``--`` or has been validated so it cannot start with
``-``. Credentials never reach ``.git/config``, the process list or a log line.
"""

from __future__ import annotations

import base64
import contextlib
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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
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
    RepositoryError,
    RevisionNotFound,
)

LineCallback = Callable[[str], None]
Transport = Literal["https", "http", "ssh", "git", "file"]

MAX_REF_LENGTH = 255
MAX_URL_LENGTH = 2048

_HEX_SHA = re.compile(r"[0-9a-fA-F]{7,40}")
# check-ref-format accepts ';', '$', '`', '|'... which are harmless in argument lists but
# turn into trouble the day a ref lands in a shell script, a log viewer or a filename.
_REF_NAME_CHARACTERS = re.compile(r"[A-Za-z0-9/._+@-]+")
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
# the tree exactly as committed (.deployignore is the place to leave files out).
# Attributes that would change the bytes written (line endings, $Id$, filters, encodings,
# export-ignore/subst) are all switched off: a checkout or an export holds the committed bytes.
# The workspace uses the same list. `!attr` unsets; `-working-tree-encoding` would be invalid.
NEUTRAL_ATTRIBUTES = (
    "* -text !eol -crlf -ident !filter !working-tree-encoding -export-ignore -export-subst\n"
)
_STDERR_TAIL_LINES = 8
#: The default wall-clock limit of one fetch, in seconds (SLIPWAY_FETCH_TIMEOUT sets it).
DEFAULT_FETCH_TIMEOUT_SECONDS = 900.0
# How often a running fetch looks at its deadline and asks whether it was cancelled.
_FETCH_POLL_SECONDS = 0.5


# --------------------------------------------------------------------------- validation


def validate_ref(ref: str, field: str = "revision") -> str:
    """Return ``ref`` if it is a hex SHA (7-40 digits) or a safe branch/tag name."""
    if not ref:
        raise InvalidInput(field, "is empty.")
    if len(ref) > MAX_REF_LENGTH:
        raise InvalidInput(field, f"is longer than {MAX_REF_LENGTH} characters.")
    if ref.startswith("-"):
        raise InvalidInput(field, f"'{_printable(ref)}' cannot start with '-'.")
    if _HEX_SHA.fullmatch(ref):
        return ref
    if not _REF_NAME_CHARACTERS.fullmatch(ref):
        raise InvalidInput(
            field,
            f"'{_printable(ref)}' may only contain letters, digits and / . _ - + @.",
        )
    if ".." in ref or ref == "@" or not _git_accepts_branch_name(ref):
        raise InvalidInput(field, f"'{ref}' is not a valid branch, tag or commit SHA.")
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
                date=datetime.fromisoformat(date),
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
    def _transport_environment(self) -> Iterator[dict[str, str]]:
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
        self._check_host_key_pinned()
        self._ensure_initialised()
        with self._transport_environment() as environment:
            process = subprocess.Popen(
                ["git", f"--git-dir={self.path}", "ls-remote", "--heads", self._fetch_url],
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
        prefix = b"refs/heads/"
        names = []
        for line in stdout.splitlines():
            _sha, _tab, ref = line.partition(b"\t")
            if ref.startswith(prefix):
                names.append(ref[len(prefix) :].decode("utf-8", errors="replace"))
        return sorted(names)

    # -- reading

    def resolve(self, ref: str) -> str:
        """Return the full SHA of the commit a branch, tag or (abbreviated) SHA points to."""
        validate_ref(ref)
        sha = self._rev_parse(f"{ref}^{{commit}}")
        if sha is None:
            raise RevisionNotFound(f"Revision '{ref}' was not found in {self.display_url}")
        return sha

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
        writing), submodules become empty folders as in a checkout without submodules.
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
                    raise RepositoryError(f"Unreadable file in the repository: {member.name}")
                _write_regular_file(source, target, executable=bool(member.mode & 0o111))
            else:
                raise RepositoryError(f"Unexpected entry type in the repository: {member.name}")


def _safe_member_parts(name: str) -> list[str]:
    parts = [part for part in name.rstrip("/").split("/")]
    if not name or name.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise RepositoryError(f"Refusing an unsafe path in the repository archive: {name!r}")
    return parts


def _ensure_real_parent(dest: Path, target: Path) -> None:
    # Members come in tree order, so every parent was created by us; a symlink here would
    # mean an earlier member tried to redirect a later one outside dest.
    parent = target.parent
    while parent != dest:
        if parent.is_symlink():
            raise RepositoryError(f"Refusing to write through a symlink: {target}")
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
