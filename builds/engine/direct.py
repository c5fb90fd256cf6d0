"""Direct mode: files uploaded in place over SFTP (atomic off, or SFTP-only servers).

There is no release directory and no switch: added and modified files are written next to
their final name and renamed over it one by one, deleted files are removed, and the manifest
is kept in ``<deploy_path>/.slipway-manifest.json`` for the next change set.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
import stat
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import paramiko

from builds.engine import release
from builds.engine.build import generated_rules
from builds.engine.errors import (
    DiskFull,
    EngineError,
    InvalidInput,
    LockHeld,
    PermissionDenied,
    TransferFailed,
)
from builds.engine.manifest import Manifest, diff, display_path, keep_generated
from builds.engine.specs import LEFT_RUNNING_SUFFIX, lock_owner
from builds.engine.variables import substitute

if TYPE_CHECKING:
    from builds.engine.build import BuildOutput
    from builds.engine.rollout import OnceSeat
    from builds.engine.specs import DeploySpec, Reporter, ServerResult, ServerSpec
    from builds.engine.ssh import Connection

MANIFEST_FILE = ".slipway-manifest.json"
LOCK_DIR = ".slipway-lock"
# Files in flight at once: each has its own SFTP channel on the one connection.
PARALLEL_FILES = 4


def _sftp_error(exc: OSError | IOError, path: str, host: str) -> Exception:
    code = getattr(exc, "errno", None)
    message = str(exc)
    path = display_path(path)
    if code == 13 or "Permission denied" in message:
        return PermissionDenied(f"Permission denied writing {path} on {host}")
    if code == 28 or "No space left" in message or message == "Failure":
        return DiskFull(f"Could not write {path} on {host}: {message or 'the disk may be full'}")
    return TransferFailed(f"Could not write {path} on {host}: {message}")


def deliver(
    spec: DeploySpec,
    server: ServerSpec,
    output: BuildOutput,
    reporter: Reporter,
    connection: Connection,
    result: ServerResult,
    *,
    once: OnceSeat | None = None,
) -> None:
    from builds.engine.rollout import run_commands
    from builds.engine.specs import STAGE_AFTER_SWITCH, STAGE_BEFORE_SWITCH, STAGE_BEFORE_TRANSFER

    root = release.validate_deploy_path(server.deploy_path)
    host = connection.endpoint.address
    sftp = connection.sftp()
    _makedirs(sftp, root)
    owner = lock_owner(spec.deployment_id)
    notes = take_lock(
        sftp,
        root,
        host,
        owner=owner,
        holder=f"Slipway deployment #{spec.deployment_id} by {spec.deployer or 'unknown'}",
        stale_after=spec.lock_stale_after,
        owner_finished=spec.lock_owner_finished,
    )
    for note in notes:
        reporter.log("system", note, server.id)
    try:
        variables = in_place_variables(spec, server, root, output.revision)
        can_run = server.shell

        def commands(stage: str) -> None:
            if can_run:
                run_commands(
                    connection,
                    spec.commands,
                    stage=stage,
                    server=server,
                    workdir=root,
                    variables=variables,
                    env=spec.server_env,
                    reporter=reporter,
                    once=once,
                )

        commands(STAGE_BEFORE_TRANSFER)
        with reporter.step("transfer", server.id):
            old = None if spec.full else _remote_manifest(sftp, root) or server.live_manifest
            changes = keep_generated(diff(old, output.manifest), generated_rules(spec.build))
            result.changes = changes
            reporter.log(
                "system",
                f"{changes.summary()} (in place)",
                server.id,
            )
            _apply(
                connection,
                sftp,
                root,
                output,
                changes.paths_to_send,
                changes.deleted,
                reporter,
                server.id,
            )
            for config in spec.config_files:
                if config.server_ids and server.id not in config.server_ids:
                    continue
                path = release.validate_relative_path(config.path, "config_files")
                _put_bytes(
                    sftp,
                    posixpath.join(root, path),
                    substitute(config.body, variables).encode(),
                    int(config.file_mode, 8),
                    host,
                )
            _put_bytes(
                sftp, posixpath.join(root, MANIFEST_FILE), output.manifest.to_json(), 0o600, host
            )
        result.manifest = output.manifest
        # No release directory in place mode; the name records the revision that went live.
        result.release = release.release_name(output.revision, spec.started_at)
        commands(STAGE_BEFORE_SWITCH)
        commands(STAGE_AFTER_SWITCH)
    finally:
        with contextlib.suppress(OSError, paramiko.SSHException, EOFError):
            break_lock(sftp, root, owner=owner)


def in_place_variables(
    spec: DeploySpec, server: ServerSpec, root: str, revision: str
) -> dict[str, str]:
    """The %variables% of a deployment whose files go in place under ``root`` (SFTP-only and
    FTP servers): every path is the deploy path itself, there are no releases."""
    return {
        "release_path": root,
        "shared_path": root,
        "current_path": root,
        "deploy_path": root,
        "startrev": server.live_revision or "",
        "endrev": revision,
        "branch": spec.branch,
        "environment": server.environment,
        "deployer": spec.deployer,
        "project": spec.project,
        "server": server.name,
        "hostname": server.endpoint.hostname,
        "release": revision[:7],
        # The server's place in the deployment's order, from 1, as for SSH servers.
        "groupindex": str(_place(spec, server)),
        # No releases to go between; an FTP or S3 rollback deploys the earlier revision.
        "previous_release_path": "",
        "rollback": "1" if server.id in spec.rollback_to else "0",
    }


def _place(spec: DeploySpec, server: ServerSpec) -> int:
    """``server``'s place in ``spec.servers``, from 1 (1 if it is not there)."""
    for index, candidate in enumerate(spec.servers):
        if candidate.id == server.id:
            return index + 1
    return 1


def take_lock(
    sftp: paramiko.SFTPClient,
    root: str,
    host: str,
    *,
    owner: str,
    holder: str,
    stale_after: int,
    owner_finished: Callable[[str], bool],
) -> tuple[str, ...]:
    """Take ``<root>/.slipway-lock`` over SFTP, as the atomic layout takes its lock: the info
    file is written into a fresh folder renamed into place (posix-rename, which fails on a
    lock that holds anything and replaces an empty one), so the lock always names its
    owner. A lock of this owner, of a finished deployment (``owner_finished``), older than
    ``stale_after`` seconds or without an owner (an empty folder an older Slipway left) is
    taken over by renaming the new info file over its own. Answers notes for the log;
    raises LockHeld (naming the holder) or DiskFull / PermissionDenied / TransferFailed when
    the info cannot be written (nothing is left behind then)."""
    lock = posixpath.join(root, LOCK_DIR)
    new = f"{lock}.{secrets.token_hex(6)}.new"
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    body = f"owner={owner}\nholder={' '.join(holder.split())}\nsince={since}\n".encode()
    try:
        sftp.mkdir(new)
        try:
            with sftp.open(f"{new}/info", "wb") as handle:
                handle.write(body)
            found = read_lock(sftp, root)
            if found is None or (not found.owner and _is_empty(sftp, lock)):
                try:
                    sftp.posix_rename(new, lock)
                    return (
                        ()
                        if found is None
                        else (
                            f"Broke a lock without an owner (an empty {lock}, left by an older Slipway)",
                        )
                    )
                except OSError:
                    found = read_lock(sftp, root)  # another taker came first
            if found is None:
                raise LockHeld(f"{root} on {host} is locked by another deployment")
            if found.owner == owner:
                note = ""
            elif not found.owner:
                note = f"Broke a lock without an owner ({found.age_seconds} s old)"
            elif not found.owner.endswith(LEFT_RUNNING_SUFFIX) and owner_finished(found.owner):
                note = f"Took over the lock of {found.owner}, which has finished"
            elif found.age_seconds > stale_after:
                note = f"Took over a stale lock of {found.owner} ({found.age_seconds} s old)"
            else:
                error = LockHeld(
                    f"{root} on {host} is locked by another deployment: "
                    f"{found.holder or found.owner} since {found.since}. If nothing is "
                    f"deploying, an admin can break the lock on the server's page (or "
                    f"remove {lock} on the server)."
                )
                error.owner = found.owner
                raise error
            sftp.posix_rename(f"{new}/info", f"{lock}/info")
            return (note,) if note else ()
        finally:
            with contextlib.suppress(OSError):
                sftp.remove(f"{new}/info")
            with contextlib.suppress(OSError):
                sftp.rmdir(new)
    except OSError as exc:
        raise _sftp_error(exc, f"{lock}/info", host) from exc


def read_lock(sftp: paramiko.SFTPClient, root: str) -> release.LockInfo | None:
    """Who holds ``<root>/.slipway-lock`` (owner "" when it names none); None if unlocked."""
    lock = posixpath.join(root, LOCK_DIR)
    try:
        found = sftp.stat(lock)
    except FileNotFoundError:
        return None
    values: dict[str, str] = {}
    stamp = found.st_mtime or 0
    try:
        stamp = sftp.stat(f"{lock}/info").st_mtime or stamp
        with sftp.open(f"{lock}/info", "rb") as handle:
            text = handle.read(64 * 1024).decode("utf-8", "replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key not in values:
            values[key] = value
    return release.LockInfo(
        owner=values.get("owner", ""),
        holder=values.get("holder", ""),
        since=values.get("since", ""),
        age_seconds=max(0, int(time.time()) - int(stamp)),
    )


def break_lock(sftp: paramiko.SFTPClient, root: str, *, owner: str) -> bool:
    """Remove ``<root>/.slipway-lock`` if its owner is ``owner`` ("" for none): renamed away
    first, so that it is never seen empty. True when removed."""
    lock = posixpath.join(root, LOCK_DIR)
    found = read_lock(sftp, root)
    if found is None or found.owner != owner:
        return False
    gone = f"{lock}.{secrets.token_hex(6)}.gone"
    try:
        sftp.rename(lock, gone)
    except OSError:
        return False
    for name in sftp.listdir(gone):
        with contextlib.suppress(OSError):
            sftp.remove(f"{gone}/{name}")
    sftp.rmdir(gone)
    return True


def _is_empty(sftp: paramiko.SFTPClient, path: str) -> bool:
    try:
        return not sftp.listdir(path)
    except OSError:
        return False


def _remote_manifest(sftp: paramiko.SFTPClient, root: str) -> Manifest | None:
    try:
        with sftp.open(posixpath.join(root, MANIFEST_FILE), "rb") as handle:
            manifest = Manifest.from_json(handle.read())
    except (OSError, ValueError, EngineError):
        return None
    # The file sits in the deploy path, where others can write: a path in it that leaves the
    # deploy path would have us delete outside it. Such a manifest is ignored (full upload).
    for path in manifest:
        try:
            release.validate_relative_path(path, "path")
        except InvalidInput:
            return None
    return manifest


def _makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
    parts = [part for part in path.split("/") if part]
    current = ""
    for part in parts:
        current += "/" + part
        try:
            sftp.stat(os.fsencode(current))
        except OSError:
            with contextlib.suppress(OSError):
                sftp.mkdir(os.fsencode(current))


def _remote(root: str, path: str) -> bytes:
    """The server path of a build path, as bytes: a file name need not be UTF-8 (paramiko
    would encode a str strictly)."""
    return os.fsencode(posixpath.join(root, path))


def _put_bytes(sftp: paramiko.SFTPClient, path: str, body: bytes, mode: int, host: str) -> None:
    _makedirs(sftp, posixpath.dirname(path))
    temporary = f"{path}.slipway-tmp"
    try:
        with sftp.open(temporary, "wb") as handle:
            handle.set_pipelined(True)
            handle.write(body)
        sftp.chmod(temporary, mode)
        sftp.posix_rename(temporary, path)
    except OSError as exc:
        raise _sftp_error(exc, path, host) from exc


def _apply(
    connection: Connection,
    sftp: paramiko.SFTPClient,
    root: str,
    output: BuildOutput,
    send: Sequence[str],
    deleted: Sequence[str],
    reporter: Reporter,
    server_id: int,
) -> None:
    host = connection.endpoint.address
    manifest = output.manifest
    # Deletions first (deepest first), so a path that changed kind can be recreated.
    for path in sorted(deleted, key=lambda p: p.count("/"), reverse=True):
        remote = _remote(root, path)
        try:
            info = sftp.lstat(remote)
            if stat.S_ISDIR(info.st_mode or 0):
                sftp.rmdir(remote)
            else:
                sftp.remove(remote)
        except OSError:
            pass  # already gone, or a folder someone filled: left alone
    folders = sorted(
        {posixpath.dirname(p) for p in send if posixpath.dirname(p)}
        | {p for p in send if manifest[p].kind == "dir"}
    )
    for folder in folders:
        _makedirs(sftp, posixpath.join(root, folder))
    files = [p for p in send if manifest[p].kind == "file"]
    links = [p for p in send if manifest[p].kind == "symlink"]
    for path in links:
        remote = _remote(root, path)
        with contextlib.suppress(OSError):
            sftp.remove(remote)
        target = os.readlink(os.fsencode(output.root / path))
        sftp.symlink(target, remote)
    total_bytes = sum(manifest[p].size for p in files)
    done = {"files": 0, "bytes": 0}
    lock = threading.Lock()
    local = threading.local()
    clients: list[paramiko.SFTPClient] = []
    last_report = [0.0]

    def client() -> paramiko.SFTPClient:
        if not hasattr(local, "sftp"):
            local.sftp = connection.new_sftp()
            with lock:
                clients.append(local.sftp)
        return local.sftp  # type: ignore[no-any-return]

    def upload(path: str) -> None:
        entry = manifest[path]
        remote = _remote(root, path)
        temporary = remote + b".slipway-tmp"
        channel = client()
        try:
            with open(output.root / path, "rb") as source, channel.open(temporary, "wb") as handle:
                handle.set_pipelined(True)
                while chunk := source.read(256 * 1024):
                    handle.write(chunk)
            channel.chmod(temporary, entry.mode)
            channel.posix_rename(temporary, remote)
        except OSError as exc:
            raise _sftp_error(exc, path, host) from exc
        with lock:
            done["files"] += 1
            done["bytes"] += entry.size
            now = time.monotonic()
            if now - last_report[0] > 0.25 or done["files"] == len(files):
                last_report[0] = now
                reporter.progress(server_id, done["files"], len(files), done["bytes"], total_bytes)

    try:
        with ThreadPoolExecutor(max_workers=PARALLEL_FILES) as pool:
            for future in [pool.submit(upload, path) for path in files]:
                reporter.check_cancelled()
                future.result()
        for path in send:
            if manifest[path].kind == "dir":
                with contextlib.suppress(OSError):
                    sftp.chmod(_remote(root, path), manifest[path].mode)
    except (paramiko.SSHException, EOFError) as exc:
        raise TransferFailed(f"The connection to {host} was lost during the upload: {exc}") from exc
    finally:
        for channel in clients:
            with contextlib.suppress(Exception):
                channel.close()
    if not files and not links and not deleted:
        reporter.log("system", "Nothing changed", server_id)
