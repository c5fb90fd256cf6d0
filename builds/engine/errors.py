"""The engine's errors, split into what a user can act on and what is ours to fix."""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""

    #: A short, stable machine-readable name (shown in the API as ``error_code``).
    code = "error"
    #: True when the person deploying can fix the cause (bad ref, wrong key, full disk...).
    user_facing = False


class UserError(EngineError):
    """A failure caused by input or by the target, explained in plain words."""

    user_facing = True


class InternalError(EngineError):
    """A failure that is Slipway's fault; reported, with detail kept out of the UI."""

    code = "internal"


class InvalidInput(UserError):
    """A field's value is refused before anything runs (ref, URL, path...)."""

    code = "invalid_input"

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class RevisionNotFound(UserError):
    code = "revision_not_found"


class RepositoryError(UserError):
    code = "repository_error"


class FetchTimedOut(RepositoryError):
    code = "fetch_timed_out"


class SubmoduleUnavailable(RepositoryError):
    """A submodule of the revision could not be fetched or checked out (names its path)."""

    code = "submodule_unavailable"


class LfsUnavailable(RepositoryError):
    """A Git LFS object of the revision could not be had (names its path, or says that
    git-lfs is missing on the worker)."""

    code = "lfs_unavailable"


class HostUnreachable(UserError):
    code = "host_unreachable"


class AuthenticationRefused(UserError):
    code = "authentication_refused"


class HostKeyNotTrusted(UserError):
    code = "host_key_not_trusted"


class HostKeyMismatch(UserError):
    code = "host_key_mismatch"

    def __init__(self, host: str, expected: str, offered: str) -> None:
        self.host = host
        self.expected = expected
        self.offered = offered
        super().__init__(
            f"Host key for {host} has changed: pinned {expected}, offered {offered}. "
            "If the server was rebuilt on purpose, check the new key and trust it again."
        )


class CertificateNotTrusted(UserError):
    """An FTPS server's certificate is neither pinned nor verifiable against the system CAs."""

    code = "certificate_not_trusted"


class CertificateMismatch(UserError):
    """An FTPS server offered another certificate than the one pinned."""

    code = "certificate_mismatch"


class PassiveAddressRefused(UserError):
    """An FTP server's PASV reply named another host than the control connection's (an
    FTP bounce): the data connection is not opened."""

    code = "passive_address_refused"


class BucketNotFound(UserError):
    """An S3 server's bucket does not exist at its endpoint (names bucket, endpoint, region)."""

    code = "bucket_not_found"


class PermissionDenied(UserError):
    code = "permission_denied"


class StorageFailed(UserError):
    """Writing on the server failed for a reason of its file system (an I/O error, a file
    system gone read-only): the message names the server, the path and the free space."""

    code = "storage_failed"


class DiskFull(StorageFailed):
    code = "disk_full"


class CommandFailed(UserError):
    code = "command_failed"

    def __init__(
        self,
        command: str,
        exit_code: int,
        tail: list[str] | None = None,
        *,
        first_errors: list[str] | None = None,
        label: str = "Command",
    ) -> None:
        self.command = command
        self.exit_code = exit_code
        self.tail = list(tail or [])
        self.first_errors = list(first_errors or [])
        #: The message's first sentence, without the output lines.
        self.headline = f"{label} `{command}` failed with exit code {exit_code}"
        message = self.headline
        if self.first_errors:
            # The first lines that read as errors say what went wrong; a tool's last lines
            # are often its usage text or "a log of this run is in ...".
            message += ". First error lines:\n" + "\n".join(self.first_errors)
        elif self.tail:
            message += ":\n" + "\n".join(self.tail)
        super().__init__(message)


class CommandTimedOut(UserError):
    code = "command_timed_out"


class DeploymentTimedOut(UserError):
    """The deployment ran into its time limit: what it was running is stopped (remote
    commands with their process groups) before the worker's own limit ends it."""

    code = "deployment_timed_out"


class LockHeld(UserError):
    code = "lock_held"
    #: The lock's owner id as written by Slipway ("deployment-12"), "" when unknown.
    owner = ""


class CurrentIsDirectory(UserError):
    code = "current_is_directory"


class UnsafeDeployPath(UserError):
    """The deploy path could be changed by someone else, or leads out of itself."""

    code = "unsafe_deploy_path"


class ReleaseMissing(UserError):
    code = "release_missing"


class DriftFound(UserError):
    """The server's live release was changed since its deployment, and the project refuses
    to deploy over drift (``ON_DRIFT_REFUSE``): the message lists the paths."""

    code = "drift_found"


class TransferFailed(UserError):
    code = "transfer_failed"


class Cancelled(UserError):
    code = "cancelled"


class Aborted(Cancelled):
    """Stopped on request, and what this deployment switched is to be rolled back."""

    code = "aborted"


class ArtefactMissing(UserError):
    """A kept build output (builds.engine.artefacts) is gone: removed by its project's
    retention, or never stored on this worker."""

    code = "artefact_missing"


class ArtefactCorrupt(UserError):
    """A kept build output's file no longer has the digest its manifest records (changed
    on disk after it was stored): it is not sent anywhere."""

    code = "artefact_corrupt"
