"""Build commands on a separate build host over SSH (SLIPWAY_BUILD_HOST), against a real sshd
whose unprivileged login user runs bubblewrap there; the release comes from what the build
host sent back, and a hostile build cannot write outside the checkout on the worker."""

from __future__ import annotations

import contextlib
import io
import tarfile

import pytest

from builds.engine import pipeline
from builds.engine.build import BuildCommandSpec, BuildSpec, Tree, unpack_build_output
from builds.engine.remote_build import BuildHost, BuildOutputRefused, RemoteBuild
from builds.engine.sandbox import SandboxPolicy, check_available
from tests.support.engine import RecordingReporter, after, deploy_spec, server_for

SECRET = "build-variable-secret-41d9"


@pytest.fixture
def build_host(sshd_factory):
    target = sshd_factory()
    base = target.deploy_path / "builds"  # a folder its login user owns
    return BuildHost(endpoint=target.endpoint(), base_path=str(base)), target


def _spec(repo, tmp_path, server, sha, host, commands, **build):
    return deploy_spec(
        repo,
        tmp_path,
        [server],
        sha,
        build={
            "build_commands": tuple(BuildCommandSpec(command=c) for c in commands),
            "build_host": host,
            "build_host_folder": "project-7",
            "build_env": {"API_TOKEN": SECRET},
            "sandbox": SandboxPolicy(network=False),
            **build,
        },
    )


def test_it_builds_on_the_build_host_and_deploys_what_came_back(
    build_host, sshd_target, git_repo_factory, tmp_path
):
    host, builder = build_host
    repo = git_repo_factory()
    sha = repo.commit({"src/app.txt": "hello\n", "site/index.html": "index\n"})
    commands = [
        "mkdir -p dist && cp src/app.txt dist/app.txt && hostname > dist/built-on",
        'test "$API_TOKEN" = ' + SECRET + " && echo token-ok",
        'mkdir -p "$HOME/.npm" && echo cached > "$HOME/.npm/marker"',
    ]
    reporter = RecordingReporter()
    server = server_for(sshd_target)
    result = pipeline.deploy(_spec(repo, tmp_path, server, sha, host, commands), reporter)
    assert result.ok, result.servers
    assert f"Building on the build host {host.endpoint.address}" in reporter.text
    assert "token-ok" in reporter.text
    current = sshd_target.deploy_path / "current"
    assert (current / "dist" / "app.txt").read_text() == "hello\n"
    assert (current / "dist" / "built-on").read_text() == "build\n"  # the sandbox's host name
    # The build's HOME stays on the build host, never in the release.
    assert not (current / ".npm").exists()
    assert (builder.deploy_path / "builds" / "project-7" / "home" / ".npm" / "marker").exists()

    # The next build starts from the next revision: nothing stale from the last one.
    b = repo.commit({"src/app.txt": "world\n", "site/index.html": None})
    second = pipeline.deploy(
        _spec(repo, tmp_path, after(result, server), b, host, commands[:1]), RecordingReporter()
    )
    assert second.ok
    assert (current / "dist" / "app.txt").read_text() == "world\n"
    assert not (current / "site" / "index.html").exists()


def test_the_variables_never_appear_on_a_command_line_of_the_build_host(build_host, tmp_path):
    host, _ = build_host
    remote = RemoteBuild(host, "project-7")
    script = remote.script(
        "make", workdir="", variables={"API_TOKEN": SECRET}, policy=SandboxPolicy()
    )
    # The value is only written into the arguments file by a shell builtin (printf).
    lines_with_secret = [line for line in script.splitlines() if SECRET in line]
    assert lines_with_secret and all(line.startswith("printf ") for line in lines_with_secret)
    assert "exec prlimit" in script and "bwrap --args 3" in script


def test_a_failing_command_on_the_build_host_fails_the_deployment_with_its_output(
    build_host, sshd_target, git_repo_factory, tmp_path
):
    host, _ = build_host
    repo = git_repo_factory()
    sha = repo.commit({"a.txt": "a\n"})
    spec = _spec(repo, tmp_path, server_for(sshd_target), sha, host, ["echo broken >&2; exit 4"])
    with pytest.raises(Exception, match="exit code 4") as raised:
        pipeline.deploy(spec, RecordingReporter())
    assert "broken" in str(raised.value)
    assert not (sshd_target.deploy_path / "current").exists()


def test_a_tar_from_a_lying_build_host_writes_nothing_outside_the_checkout(tmp_path):
    """What comes back is unpacked by tar inside the local sandbox: absolute names, ``..``,
    links out of the tree and files written through them all stay inside the checkout."""
    outside = tmp_path / "worker-files"
    outside.mkdir()
    archive = tmp_path / "output.tar"
    with tarfile.open(archive, "w") as tar:

        def add(name: str, data: bytes = b"", **fields) -> None:
            info = tarfile.TarInfo(name)
            for key, value in fields.items():
                setattr(info, key, value)
            info.size = len(data) if info.type == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)

        add("app.js", b"built\n")
        add("../escape.txt", b"x")
        add(str(outside / "absolute.txt"), b"x")
        add("link", type=tarfile.SYMTYPE, linkname=str(outside))
        add("link/through-link.txt", b"x")
        add("hard", type=tarfile.LNKTYPE, linkname=str(outside / "hard-target"))
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "old.txt").write_text("from the last build")
    spec = BuildSpec(
        repository_url="unused",
        mirror_dir=tmp_path / "mirror.git",
        workspace_dir=tmp_path / "workspace",
        cache_dir=tmp_path / "cache",
        revision="main",
        sandbox=SandboxPolicy(network=False),
    )
    tree = Tree(root=checkout, hash_cache=None, hash_cache_path=None)
    with contextlib.suppress(BuildOutputRefused):  # tar may complain; nothing may escape
        unpack_build_output(
            spec,
            tree,
            archive,
            home=tmp_path / "home",
            identity=check_available(spec.sandbox),
        )
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "escape.txt").exists()
    assert (checkout / "app.js").read_text() == "built\n"
    assert not (checkout / "old.txt").exists()


def test_two_builds_of_one_project_on_the_build_host_use_their_own_trees(build_host):
    host, builder = build_host
    first, second = RemoteBuild(host, "project-7"), RemoteBuild(host, "project-7")
    assert first.source != second.source and first.home == second.home
    with first:
        first.connection.run(f"touch {first.source}/marker", timeout=30)
        assert (builder.deploy_path / "builds" / "project-7" / first.source.name).is_dir()
    assert not (builder.deploy_path / "builds" / "project-7" / first.source.name).exists()


def test_a_build_host_without_the_trusted_key_is_refused(
    build_host, sshd_target, git_repo_factory, tmp_path
):
    host, _ = build_host
    wrong = BuildHost(
        endpoint=host.endpoint.__class__(
            hostname=host.endpoint.hostname,
            port=host.endpoint.port,
            username=host.endpoint.username,
            private_key=host.endpoint.private_key,
            host_key_fingerprint="SHA256:" + "A" * 43,
        ),
        base_path=host.base_path,
    )
    repo = git_repo_factory()
    sha = repo.commit({"a.txt": "a\n"})
    spec = _spec(repo, tmp_path, server_for(sshd_target), sha, wrong, ["true"])
    with pytest.raises(Exception, match="SHA256:AAAA"):
        pipeline.deploy(spec, RecordingReporter())
