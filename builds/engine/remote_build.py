"""Build commands on a separate build host, reached over SSH (``SLIPWAY_BUILD_HOST``).

The local sandbox (``sandbox``) shares the worker's kernel with builds, and the worker holds
the database credentials and the encryption keys. An operator who wants a stronger boundary
points workers at a build host that holds nothing of Slipway's: no database, no keys, no other
service. For each build:

1. the checkout is sent as one tar stream into ``<base>/project-<id>/src`` on the build host
   (replacing what the previous build left there; ``<base>/project-<id>/home`` persists as the
   build's HOME, its package caches);
2. each command runs there in bubblewrap, as the build host's login user, from a clean
   environment: the same mounts as the local sandbox, with the arguments (the project's build
   variables among them) passed through a file descriptor (``bwrap --args``), never on a
   command line other users of the host could read;
3. the tree is fetched back as a tar file over SFTP and unpacked over the local checkout by
   GNU tar inside the local sandbox (as the build account, the checkout its only writable
   place), so neither a hostile build nor a lying build host can write anywhere else on the
   worker (tar-extraction bugs such as CVE-2025-4517 included).

The build host needs bubblewrap and unprivileged user namespaces. With the project's build
network on, builds share the build host's network (it runs no other service by design); with
it off, they get their own empty network namespace.

Sources: bubblewrap(1) (``--args FD``).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from builds.engine import ssh
from builds.engine.errors import CommandFailed, CommandTimedOut, InvalidInput, UserError
from builds.engine.sandbox import (
    MERGED_USR,
    SANDBOX_HOME,
    SANDBOX_SOURCE,
    SYSTEM_PATHS,
    SandboxPolicy,
    SandboxUnavailable,
    base_environment,
    isolation_arguments,
)

LineSink = Callable[[str, str], None]

_CHUNK_BYTES = 1 << 20
_TRANSFER_TIMEOUT_SECONDS = 3600.0


class BuildOutputRefused(UserError):
    """The build host sent back a tree that may not be unpacked on the worker."""

    code = "build_output_refused"


@dataclass(frozen=True)
class BuildHost:
    """The operator's build host: where to log in, and the folder builds live under."""

    endpoint: ssh.Endpoint
    base_path: str

    def __post_init__(self) -> None:
        path = PurePosixPath(self.base_path)
        if not path.is_absolute() or ".." in path.parts or str(path) == "/":
            raise InvalidInput(
                "SLIPWAY_BUILD_HOST", f"the path {self.base_path!r} must be an absolute folder"
            )


def _q(value: str | os.PathLike[str]) -> str:
    return shlex.quote(os.fspath(value))


class RemoteBuild:
    """One project's build on the build host, over one SSH connection.

    ``with RemoteBuild(host, "project-12") as remote:`` connects (pinned host key) and checks
    bubblewrap there; ``upload``, ``run`` for each command, then ``download``.
    Raises SandboxUnavailable when the build host cannot sandbox, and the ssh module's errors
    (HostUnreachable, HostKeyMismatch, AuthenticationRefused...) when it cannot be reached.
    """

    def __init__(self, host: BuildHost, name: str, run: str | None = None) -> None:
        self.host = host
        self.folder = PurePosixPath(host.base_path) / name
        # One tree per build: two deployments of a project may build at the same time.
        self.run_id = run or uuid.uuid4().hex[:16]
        self.source = self.folder / f"src-{self.run_id}"
        self.output = self.folder / f"output-{self.run_id}.tar"
        self.home = self.folder / "home"
        self._connection: ssh.Connection | None = None

    def __enter__(self) -> RemoteBuild:
        self._connection = ssh.connect(self.host.endpoint)
        try:
            probe = self.connection.run(
                "command -v bwrap >/dev/null && bwrap --unshare-all --ro-bind / / true",
                check=False,
                timeout=60,
            )
            if probe.exit_code != 0:
                raise SandboxUnavailable(
                    f"The build host {self.host.endpoint.address} cannot run the build sandbox: "
                    "install bubblewrap there (apt-get install bubblewrap) and allow "
                    "unprivileged user namespaces."
                )
            self.connection.run(
                f"umask 077 && mkdir -p {_q(self.source)} {_q(self.home)}", timeout=60
            )
        except BaseException:
            self.connection.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.run(
                    f"rm -rf {_q(self.source)} {_q(self.output)}", timeout=600, check=False
                )
            self._connection.close()

    @property
    def connection(self) -> ssh.Connection:
        assert self._connection is not None, "use RemoteBuild as a context manager"
        return self._connection

    def upload(self, checkout: Path) -> None:
        """Make the build host's ``src`` exactly ``checkout`` (one tar stream)."""
        archive = subprocess.Popen(
            ["tar", "-C", str(checkout), "--numeric-owner", "-cf", "-", "."],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert archive.stdout is not None

        def chunks() -> Iterator[bytes]:
            assert archive.stdout is not None
            while chunk := archive.stdout.read(_CHUNK_BYTES):
                yield chunk

        try:
            self.connection.run_streaming_stdin(
                f"rm -rf {_q(self.source)} && mkdir -m 700 {_q(self.source)} && "
                f"tar -C {_q(self.source)} --no-same-owner -xf -",
                chunks(),
                timeout=_TRANSFER_TIMEOUT_SECONDS,
            )
        finally:
            archive.stdout.close()
            archive.wait()

    def run(
        self,
        command: str,
        *,
        workdir: str,
        variables: Mapping[str, str],
        policy: SandboxPolicy,
        on_line: LineSink,
        timeout_seconds: int | None,
        halt_on_error: bool,
    ) -> int:
        """Run one build command in bubblewrap on the build host; its exit code.

        Raises CommandFailed (non-zero with ``halt_on_error``) or CommandTimedOut.
        """
        script = self.script(command, workdir=workdir, variables=variables, policy=policy)
        try:
            result = self.connection.run(
                "sh -s",
                stdin=script.encode(),
                on_line=lambda stream, text: on_line(stream, text),
                timeout=timeout_seconds,
                check=False,
            )
        except CommandTimedOut:
            raise CommandTimedOut(
                f"Build command `{command}` timed out after {timeout_seconds} s"
            ) from None
        if result.exit_code != 0 and halt_on_error:
            raise CommandFailed(command, result.exit_code, list(result.tail))
        return result.exit_code

    def script(
        self,
        command: str,
        *,
        workdir: str,
        variables: Mapping[str, str],
        policy: SandboxPolicy,
    ) -> str:
        """The shell script (sent on stdin) that starts ``command`` in bubblewrap there.

        Every argument is written NUL-separated into a 0600 file that bwrap reads through
        ``--args`` (then removed): the variables' values never appear in a process's argv.
        """
        environment = {**base_environment(SANDBOX_HOME), **variables}
        environment.update(HOME=SANDBOX_HOME, TMPDIR="/tmp")  # noqa: S108
        # With the network on, builds share the build host's network (it runs nothing else).
        fixed = isolation_arguments(environment, own_network=not policy.network)
        tail = [
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",  # noqa: S108 - the sandbox's own tmpfs
            "--tmpfs",
            "/build",
            "--bind",
            str(self.source),
            SANDBOX_SOURCE,
            "--bind",
            str(self.home),
            SANDBOX_HOME,
            "--chdir",
            str(PurePosixPath(SANDBOX_SOURCE) / workdir),
        ]
        lines = [
            "set -eu",
            "umask 077",
            f"args={_q(self.folder)}/.bwrap-args.$$",
            ': > "$args"',
            *(f"printf '%s\\0' {_q(argument)} >> \"$args\"" for argument in fixed),
            f"for p in {' '.join(SYSTEM_PATHS + tuple(policy.readonly_paths))}; do",
            '  if [ -d "$p" ]; then printf \'%s\\0\' --ro-bind "$p" "$p" >> "$args"; fi',
            "done",
            f"for p in {' '.join(MERGED_USR)}; do",
            '  if [ -L "$p" ]; then printf \'%s\\0\' --symlink "$(readlink "$p")" "$p" >> "$args";',
            '  elif [ -d "$p" ]; then printf \'%s\\0\' --ro-bind "$p" "$p" >> "$args"; fi',
            "done",
            *(f"printf '%s\\0' {_q(argument)} >> \"$args\"" for argument in tail),
            'exec 3< "$args"',
            'rm -f "$args"',
            f"exec prlimit --nproc={policy.max_processes} --nofile={policy.max_open_files} -- "
            f"bwrap --args 3 -- /bin/sh -c {_q(command)}",
        ]
        return "\n".join(lines) + "\n"

    def fetch_output(self, local_tar: Path) -> None:
        """The build host's ``src`` as a tar file at ``local_tar`` (over SFTP).

        Not unpacked here: a tar file from another machine is unpacked only inside the local
        sandbox (build.unpack_build_output), where it can write nothing but the checkout.
        """
        self.connection.run(
            f"tar -C {_q(self.source)} --numeric-owner -cf {_q(self.output)} .",
            timeout=_TRANSFER_TIMEOUT_SECONDS,
        )
        self.connection.sftp().get(str(self.output), str(local_tar))
        self.connection.run(f"rm -f {_q(self.output)}", timeout=60)
