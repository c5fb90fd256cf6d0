"""The build on the worker: checkout, build cache, build commands, manifest."""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import os
import re
import selectors
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from builds.engine import content
from builds.engine.content import ContentPolicy
from builds.engine.errors import CommandFailed, CommandTimedOut, InvalidInput
from builds.engine.excludes import (
    SOURCE_DEPLOYIGNORE,
    SOURCE_GENERATED,
    SOURCE_MANAGED,
    SOURCE_PROJECT,
    ExcludeRules,
    Exclusions,
    load_deployignore,
    parse_rules,
)
from builds.engine.git import Mirror, validate_subdirectory
from builds.engine.lines import LineSplitter
from builds.engine.manifest import HashCache, Manifest, file_entry
from builds.engine.release import validate_relative_path
from builds.engine.remote_build import BuildHost, BuildOutputRefused, RemoteBuild
from builds.engine.sandbox import HostIdentity, SandboxPolicy, check_available, hand_over
from builds.engine.sandbox import start as sandbox_start
from builds.engine.workspace import Workspace

LineSink = Callable[[str, str], None]


@dataclass(frozen=True)
class BuildCommandSpec:
    command: str
    description: str = ""
    timeout_seconds: int | None = None
    halt_on_error: bool = True
    watch_globs: tuple[str, ...] = ()

    def wanted(self, changed: Sequence[str] | None) -> bool:
        """Watch globs skip the command when no changed file matches (None: unknown, run)."""
        if not self.watch_globs or changed is None:
            return True
        return any(fnmatch.fnmatchcase(path, glob) for glob in self.watch_globs for path in changed)


#: How many of a failed build command's first error lines its error shows.
FIRST_ERROR_LINES = 8
#: A line that reads as an error in the output of common build tools (npm, yarn, pip,
#: composer, make, gcc, tsc, webpack, Python tracebacks).
ERROR_LINE = re.compile(
    r"\berror\b|\bERR!|\bfatal\b|\bfailed\b|\bexception\b|^Traceback|\bcannot\b"
    r"|\bcan't\b|\bnot found\b|\bno such\b|\bmissing\b|\bundefined\b|\bdenied\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class BuildSpec:
    repository_url: str
    mirror_dir: Path
    #: The project's persistent workspace (checked out incrementally).
    workspace_dir: Path
    cache_dir: Path
    revision: str
    #: The project's persistent build home (HOME and package managers' caches); never uploaded.
    home_dir: Path | None = None
    sandbox: SandboxPolicy = field(default_factory=SandboxPolicy)
    #: Run build commands on this build host instead of the worker (SLIPWAY_BUILD_HOST),
    #: in its folder ``build_host_folder`` (one per project).
    build_host: BuildHost | None = None
    build_host_folder: str = ""
    ssh_private_key: str | None = field(default=None, repr=False)
    https_token: str | None = field(default=None, repr=False)
    allow_local: bool = False
    subdirectory: str = ""
    excluded: tuple[str, ...] = ()
    # Paths not uploaded because Slipway writes them itself (shared links, config files).
    managed_paths: tuple[str, ...] = ()
    #: Globs (exclude-rule syntax) of what the deployment's own commands write on the
    #: server (bytecode, collected static files, caches): never uploaded, and on the server
    #: never restored or removed as drift, nor deleted because the build lacks them.
    generated_paths: tuple[str, ...] = ()
    cache_paths: tuple[str, ...] = ()
    build_commands: tuple[BuildCommandSpec, ...] = ()
    build_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    skip_build: bool = False
    skip_cache: bool = False
    #: Used instead of the workspace when another deployment of the project holds it.
    scratch_dir: Path | None = None
    #: Leave out what ``.gitattributes`` marks ``export-ignore``, as ``git archive`` does.
    export_ignore: bool = True
    #: Submodules and Git LFS objects (content.py).
    content: ContentPolicy = field(default_factory=ContentPolicy)


@dataclass(frozen=True)
class BuildOutput:
    revision: str
    root: Path
    manifest: Manifest
    #: What each exclude rule left out of the manifest (for the log and the preview).
    exclusions: Exclusions = field(default_factory=Exclusions)


def exclude_rules(
    spec: BuildSpec,
    root: Path,
    export_ignored: frozenset[str] = frozenset(),
    *,
    managed: bool = True,
) -> ExcludeRules:
    """The rules that keep paths of the build out of the release, in order: the project's
    excluded files, the committed ``.deployignore``, the generated paths, and (unless
    ``managed`` is False) the paths Slipway writes itself; plus ``export_ignored``
    (``Tree.export_ignored``). Each rule knows its source, for the report of what it
    removed (see ``excludes.Exclusions``)."""
    rules = [
        *parse_rules(spec.excluded, SOURCE_PROJECT),
        *parse_rules(load_deployignore(root), SOURCE_DEPLOYIGNORE),
        *parse_rules(spec.generated_paths, SOURCE_GENERATED),
    ]
    if managed:
        paths = [f"/{validate_relative_path(path, 'path')}" for path in spec.managed_paths]
        rules += parse_rules(paths, SOURCE_MANAGED)
    return ExcludeRules(rules, ignored_paths=export_ignored)


def generated_rules(spec: BuildSpec) -> ExcludeRules | None:
    """The generated paths as rules (None when there are none): see ``generated_paths``."""
    return rules_for_generated(spec.generated_paths)


def rules_for_generated(patterns: Sequence[str]) -> ExcludeRules | None:
    """``patterns`` (``BuildSpec.generated_paths``) as rules; None when there are none."""
    return ExcludeRules(parse_rules(patterns, SOURCE_GENERATED)) if patterns else None


def run_local_command(
    command: BuildCommandSpec,
    *,
    cwd: Path,
    env: Mapping[str, str],
    on_line: LineSink,
    check_cancelled: Callable[[], None] = lambda: None,
    checkout: Path | None = None,
    home: Path | None = None,
    policy: SandboxPolicy | None = None,
    identity: HostIdentity | None = None,
) -> int:
    """Run one build command through /bin/sh in ``cwd``, streaming its lines as they come.

    The command runs in the build sandbox (``sandbox.start``) with ``checkout`` (the top of
    the tree, ``cwd`` at or under it) and ``home`` (the project's persistent cache) as its
    only writable places; ``env`` holds the project's build variables only. Raises
    CommandFailed (non-zero exit with halt on error), CommandTimedOut, Cancelled (from
    ``check_cancelled``) and SandboxUnavailable.
    """
    policy = policy or SandboxPolicy()
    checkout = checkout or cwd
    home = home or cwd
    identity = identity or check_available(policy)
    handle = sandbox_start(
        command.command,
        policy=policy,
        identity=identity,
        checkout=checkout,
        workdir=cwd,
        home=home,
        variables=env,
    )
    process = handle.process
    assert process.stdout is not None and process.stderr is not None
    deadline = time.monotonic() + command.timeout_seconds if command.timeout_seconds else None
    selector = selectors.DefaultSelector()
    splitters = {"stdout": LineSplitter(), "stderr": LineSplitter()}
    selector.register(process.stdout, selectors.EVENT_READ, "stdout")
    selector.register(process.stderr, selectors.EVENT_READ, "stderr")
    tail: list[str] = []
    first_errors: list[str] = []

    def emit(stream: str, text: str) -> None:
        tail.append(text)
        del tail[:-20]
        if len(first_errors) < FIRST_ERROR_LINES and ERROR_LINE.search(text):
            first_errors.append(text[:500])
        on_line(stream, text)

    try:
        while selector.get_map():
            if deadline is not None and time.monotonic() > deadline:
                handle.kill()
                raise CommandTimedOut(
                    f"Build command `{command.command}` timed out after {command.timeout_seconds} s"
                )
            check_cancelled()
            for key, _ in selector.select(timeout=0.5):
                stream = str(key.data)
                chunk = os.read(key.fd, 65536)
                lines = splitters[stream].feed(chunk) if chunk else splitters[stream].finish()
                if not chunk:
                    selector.unregister(key.fileobj)
                for line in lines:
                    emit(stream, line)
        exit_code = process.wait()
    except BaseException:
        handle.kill()
        raise
    finally:
        selector.close()
        process.stdout.close()
        process.stderr.close()
        handle.close()
    if exit_code != 0 and command.halt_on_error:
        raise CommandFailed(
            command.command, exit_code, tail, first_errors=first_errors, label="Build command"
        )
    return exit_code


def _through_real_folders(root: Path, path: str, field: str) -> Path:
    """``root/path`` when no folder on the way is a symlink (the checkout's content decides
    what is a symlink, and the worker must never read or write outside it through one).

    Raises InvalidInput naming ``field`` and the symlinked folder.
    """
    folder = root
    for part in path.split("/")[:-1]:
        folder = folder / part
        if folder.is_symlink():
            raise InvalidInput(
                field,
                f"'{path}' lies under '{folder.relative_to(root)}', which is a symlink; "
                "cached paths must be real folders",
            )
    return root / path


def restore_cache(spec: BuildSpec, root: Path, log: LineSink) -> None:
    if spec.skip_cache or not spec.cache_paths:
        return
    for raw in spec.cache_paths:
        path = validate_relative_path(raw, "cache_paths")
        source = _through_real_folders(spec.cache_dir, path, "cache_paths")
        if not os.path.lexists(source):
            continue
        target = _through_real_folders(root, path, "cache_paths")
        if target.exists() or target.is_symlink():
            continue  # the repository has it: the revision wins over the cache
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir() and not source.is_symlink():
            shutil.copytree(source, target, symlinks=True)
        else:
            shutil.copy2(source, target, follow_symlinks=False)
        log("system", f"Restored {path} from the build cache")


def save_cache(spec: BuildSpec, root: Path, log: LineSink) -> None:
    if not spec.cache_paths:
        return
    for raw in spec.cache_paths:
        path = validate_relative_path(raw, "cache_paths")
        source = _through_real_folders(root, path, "cache_paths")
        target = _through_real_folders(spec.cache_dir, path, "cache_paths")
        if not os.path.lexists(source):
            continue
        staging = target.with_name(target.name + ".saving")
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir() and not source.is_symlink():
            shutil.copytree(source, staging, symlinks=True)
        else:
            shutil.copy2(source, staging, follow_symlinks=False)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        staging.rename(target)
        log("system", f"Saved {path} to the build cache")


@dataclass(frozen=True)
class Tree:
    """Where a build happens: the build root, and the hash cache when it is the workspace."""

    root: Path
    hash_cache: HashCache | None
    hash_cache_path: Path | None
    #: The top of the checkout (``root`` is this or a folder in it, the project's subdirectory).
    top: Path | None = None
    #: Tells the workspace's index what the tree looks like now (Workspace.refresh).
    refresh_index: Callable[[], None] | None = None
    #: Paths under ``root`` marked ``export-ignore`` (empty when the project turned it off).
    export_ignored: frozenset[str] = frozenset()

    @property
    def checkout(self) -> Path:
        return self.top or self.root


def folder_within(top: Path, subdirectory: str, sha: str) -> Path:
    """``top/subdirectory`` when every part of it is a real folder inside ``top``.

    A committed symlink anywhere along the way (``site`` in ``site/var``) would move the
    build root out of the checkout, and the worker's files would be built and uploaded:
    raises InvalidInput naming the subdirectory instead.
    """
    folder = top
    for part in subdirectory.split("/"):
        folder = folder / part
        if folder.is_symlink() or not folder.is_dir():
            raise InvalidInput(
                "subdirectory",
                f"'{subdirectory}' is not a folder in revision {sha[:12]} "
                f"('{folder.relative_to(top)}' is a symlink or not a folder)",
            )
    if not folder.resolve().is_relative_to(top.resolve()):
        raise InvalidInput("subdirectory", f"'{subdirectory}' leads outside the checkout")
    return folder


@contextlib.contextmanager
def checked_out(spec: BuildSpec, mirror: Mirror, sha: str, log: LineSink) -> Iterator[Tree]:
    """Exactly ``sha`` on disk for the whole deployment (the upload reads from it).

    The project's persistent workspace when it is free: only files that changed since its last
    checkout are rewritten, and unchanged files keep the hashes cached for them. When another
    deployment of the project holds it, a fresh export into a scratch directory instead.
    """
    subdirectory = validate_subdirectory(spec.subdirectory) if spec.subdirectory else ""
    ignored = _export_ignored(mirror, sha, subdirectory) if spec.export_ignore else frozenset()
    workspace = Workspace(spec.workspace_dir, mirror)
    with workspace.try_lock() as locked:
        if locked:
            keep = (
                ()
                if spec.skip_cache
                else tuple(
                    f"{subdirectory}/{validate_relative_path(path, 'cache_paths')}"
                    if subdirectory
                    else validate_relative_path(path, "cache_paths")
                    for path in spec.cache_paths
                )
            )
            top = workspace.checkout(sha, keep=keep)
            content.complete(mirror, sha, top, spec.content, log)
            root = folder_within(top, subdirectory, sha) if subdirectory else top
            if spec.build_commands and not spec.skip_build and spec.build_host is None:
                # The build account owns the tree it builds in; the index must learn the new
                # owner (a ctime change), or the next checkout rewrites every file.
                hand_over([top], check_available(spec.sandbox))
                workspace.refresh()
            yield Tree(
                root,
                HashCache.load(workspace.hash_cache_path),
                workspace.hash_cache_path,
                top,
                export_ignored=ignored,
                refresh_index=workspace.refresh,
            )
            return
    log(
        "system",
        "The project's workspace is busy with another deployment: building in a fresh directory",
    )
    scratch = spec.scratch_dir or spec.workspace_dir.with_name(
        f"{spec.workspace_dir.name}-scratch-{os.getpid()}"
    )
    try:
        mirror.export(sha, scratch, subdirectory or None)
        content.complete(mirror, sha, scratch, spec.content, log, subdirectory=subdirectory)
        yield Tree(scratch, None, None, export_ignored=ignored)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _export_ignored(mirror: Mirror, sha: str, subdirectory: str) -> frozenset[str]:
    """The revision's export-ignored paths, relative to the build root."""
    ignored = mirror.export_ignored(sha)
    if not subdirectory:
        return ignored
    prefix = subdirectory + "/"
    return frozenset(path[len(prefix) :] for path in ignored if path.startswith(prefix))


def build(
    spec: BuildSpec,
    *,
    tree: Tree,
    sha: str,
    changed: Sequence[str] | None,
    log: LineSink,
    check_cancelled: Callable[[], None] = lambda: None,
) -> BuildOutput:
    """Run the build commands in the checked-out tree, then hash the output."""
    root = tree.root
    home = spec.home_dir or spec.cache_dir.with_name("home")
    # In the workspace, cached paths simply stay in place between builds; a scratch
    # directory gets them from (and gives them back to) the project's cache directory.
    in_workspace = tree.hash_cache is not None
    if spec.build_commands and not spec.skip_build:
        if not in_workspace:
            restore_cache(spec, root, log)
        if spec.build_host is not None:
            _build_on_host(spec, tree, changed, log, check_cancelled)
        else:
            _build_here(spec, tree, home, changed, log, check_cancelled)
        if not in_workspace:
            save_cache(spec, root, log)
    elif spec.skip_build and spec.build_commands:
        log("system", "Build commands skipped for this deployment")
    exclusions = Exclusions()
    manifest = Manifest.build(
        root,
        exclude_rules(spec, root, tree.export_ignored),
        cache=tree.hash_cache,
        exclusions=exclusions,
    )
    if tree.hash_cache is not None and tree.hash_cache_path is not None:
        tree.hash_cache.save(tree.hash_cache_path)
        # Saved: the upload, the switch and the recording that follow never read it, and at
        # 100,000 files it is some 25 MB the worker would hold until the deployment ends.
        tree.hash_cache.forget()
    for line in exclusions.lines():
        log("system", line)
    return BuildOutput(revision=sha, root=root, manifest=manifest, exclusions=exclusions)


def _skipped(command: BuildCommandSpec, changed: Sequence[str] | None, log: LineSink) -> bool:
    if command.wanted(changed):
        return False
    label = command.description or command.command
    log("system", f"Skipped `{label}`: no changed file matches {', '.join(command.watch_globs)}")
    return True


def _build_here(
    spec: BuildSpec,
    tree: Tree,
    home: Path,
    changed: Sequence[str] | None,
    log: LineSink,
    check_cancelled: Callable[[], None],
) -> None:
    """Each build command in the sandbox on this worker."""
    identity = check_available(spec.sandbox)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    # The home only at its top: builds of the project running at the same time write in it,
    # and a walk there could be led elsewhere by a swapped symlink.
    hand_over([tree.checkout], identity)
    hand_over([home], identity, recursive=False)
    if not spec.sandbox.enabled:
        log("system", "Build sandbox is off on this worker (SLIPWAY_BUILD_SANDBOX=off)")
    for command in spec.build_commands:
        check_cancelled()
        if _skipped(command, changed, log):
            continue
        log("system", f"$ {command.command}")
        exit_code = run_local_command(
            command,
            cwd=tree.root,
            env=spec.build_env,
            on_line=log,
            check_cancelled=check_cancelled,
            checkout=tree.checkout,
            home=home,
            policy=spec.sandbox,
            identity=identity,
        )
        _report_exit(command, exit_code, log)


def _build_on_host(
    spec: BuildSpec,
    tree: Tree,
    changed: Sequence[str] | None,
    log: LineSink,
    check_cancelled: Callable[[], None],
) -> None:
    """Each build command on the operator's build host (remote_build), the tree sent there
    and fetched back."""
    assert spec.build_host is not None
    host = spec.build_host
    log("system", f"Building on the build host {host.endpoint.address}")
    workdir = tree.root.relative_to(tree.checkout).as_posix()

    def on_line(stream: str, text: str) -> None:
        check_cancelled()  # raising here stops the remote command
        log(stream, text)

    # What comes back is unpacked in the local sandbox: it must be there.
    identity = check_available(spec.sandbox)
    home = spec.home_dir or spec.cache_dir.with_name("home")
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    hand_over([home], identity, recursive=False)
    remote = RemoteBuild(host, spec.build_host_folder or "project")
    scratch = spec.cache_dir.with_name(f"remote-output-{remote.run_id}")
    with remote:
        remote.upload(tree.checkout)
        for command in spec.build_commands:
            check_cancelled()
            if _skipped(command, changed, log):
                continue
            log("system", f"$ {command.command}")
            exit_code = remote.run(
                command.command,
                workdir="" if workdir == "." else workdir,
                variables=spec.build_env,
                policy=spec.sandbox,
                on_line=on_line,
                timeout_seconds=command.timeout_seconds,
                halt_on_error=command.halt_on_error,
            )
            _report_exit(command, exit_code, log)
        scratch.mkdir(parents=True, mode=0o700)
        try:
            remote.fetch_output(scratch / "output.tar")
            unpack_build_output(spec, tree, scratch / "output.tar", home=home, identity=identity)
            if tree.refresh_index is not None:
                tree.refresh_index()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


_UNPACKED_ARCHIVE = ".slipway-build-output.tar"


def unpack_build_output(
    spec: BuildSpec, tree: Tree, archive: Path, *, home: Path, identity: HostIdentity
) -> None:
    """Replace the checkout's content with the tar file ``archive`` from the build host.

    GNU tar unpacks it inside the local sandbox (no network), as the build account, with the
    checkout as its only writable place: whatever the archive holds (absolute names, ``..``,
    links out of the tree, tar bugs), nothing outside the checkout can be written. Raises
    BuildOutputRefused with tar's last words when it cannot be unpacked.
    """
    checkout = tree.checkout
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    for entry in list(os.scandir(checkout)):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
    shutil.move(archive, checkout / _UNPACKED_ARCHIVE)
    hand_over([checkout], identity)
    said: list[str] = []
    try:
        run_local_command(
            BuildCommandSpec(
                f"exec 3< {_UNPACKED_ARCHIVE} && rm -f {_UNPACKED_ARCHIVE} && "
                "tar -x --no-same-owner -f - <&3"
            ),
            cwd=checkout,
            env={},
            on_line=lambda _stream, text: said.append(text),
            checkout=checkout,
            home=home,
            policy=dataclasses.replace(spec.sandbox, network=False),
            identity=identity,
        )
    except CommandFailed:
        raise BuildOutputRefused(
            "What the build host sent back could not be unpacked: " + "; ".join(said[-5:])
        ) from None


def _report_exit(command: BuildCommandSpec, exit_code: int, log: LineSink) -> None:
    if exit_code != 0:
        label = command.description or command.command
        log("system", f"`{label}` exited with {exit_code}; going on (halt on error is off)")


def shared_seeds(spec: BuildSpec, root: Path, shared_paths: Sequence[str]) -> Manifest:
    """What the build holds at each shared path (a folder's content, a file), with paths
    relative to ``root``: sent to a server whose ``shared/`` lacks the path, to fill it once.

    The project's exclude rules apply (not the rule that keeps shared paths out of the
    release). A shared path that is missing, or lies under or is a symlink of the checkout,
    has no seed.
    """
    rules = exclude_rules(spec, root, managed=False)
    entries = []
    for raw in shared_paths:
        path = validate_relative_path(raw, "shared_paths")
        place = root / path
        if any(
            (root / "/".join(path.split("/")[:end])).is_symlink()
            for end in range(1, path.count("/") + 2)
        ):
            continue
        if place.is_dir():
            folder = Manifest.build(place)
            entries += [
                dataclasses.replace(entry, path=f"{path}/{entry.path}")
                for entry in folder.values()
                if not rules.excludes(f"{path}/{entry.path}", is_dir=entry.is_dir)
            ]
        elif place.is_file() and not rules.excludes(path):
            entry = file_entry(root, path)
            entries += [entry] if entry is not None else []
    return Manifest(entries)
