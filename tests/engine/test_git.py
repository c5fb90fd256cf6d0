"""The repository mirror against real git repositories, and the checks on what users type."""

from __future__ import annotations

import base64
import http.server
import io
import os
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import pytest

from builds.engine.errors import (
    HostKeyMismatch,
    HostKeyNotTrusted,
    InvalidInput,
    RepositoryError,
    RevisionNotFound,
)
from builds.engine.git import (
    Mirror,
    _extract_tar_stream,
    redact_url,
    ssh_host_of,
    validate_ref,
    validate_repository_url,
    validate_subdirectory,
)
from tests.support.gitrepos import GitRepo, GitRepoFactory
from tests.support.sshd import SSHTarget, generate_key_pair
from tests.support.webserve import serve_in_background

LITERAL_MARKER = Path("/tmp/pwned")


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    """A file that exists only if a hostile input managed to run a command."""
    path = tmp_path / "pwned-marker"
    yield path
    assert not path.exists(), "a hostile input ran a command"
    assert not LITERAL_MARKER.exists(), "a hostile input ran a command"


@pytest.fixture
def origin(git_repo_factory: GitRepoFactory) -> GitRepo:
    return git_repo_factory("origin")


@pytest.fixture
def mirror_of(tmp_path: Path):
    def make(repo: GitRepo) -> Mirror:
        return Mirror(tmp_path / "mirror.git", repo.url, allow_local=True)

    return make


# --------------------------------------------------------------------------- refs


@pytest.mark.parametrize(
    "ref",
    [
        "main",
        "feature/login-form",
        "release-1.2",
        "v1.2.3",
        "deps+bump",
        "user@fix",
        "a1b2c3d",
        "feature/ünïcode",
        "日本語/ブランチ",
        "a+b",
        "fix;typo",
        "main|id",
        "main&id",
        "$(id)",
        "`id`",
        "it's",
        'say"hi"',
        "50%",
        "a=b,c",
        "#42",
        "{braces}",
    ],
)
def test_it_accepts_every_branch_and_tag_name_git_accepts(ref: str) -> None:
    assert validate_ref(ref) == ref
    # Exactly what git itself says about it (the rule is git's, not a list of our own).
    assert subprocess.run(["git", "check-ref-format", "--branch", ref], check=False).returncode == 0


@pytest.mark.parametrize("sha", ["a1b2c3d", "A1B2C3D4", "0123456789abcdef0123456789abcdef01234567"])
def test_it_accepts_abbreviated_and_full_shas(sha: str) -> None:
    assert validate_ref(sha) == sha


@pytest.mark.parametrize(
    "ref",
    [
        "main;touch {marker}",
        "--upload-pack=touch {marker}",
        "-x",
        "a..b",
        "a b",
        "$(touch {marker})",
        "`touch {marker}`",
        "main\nid",
        "tab\tname",
        "bell\x07",
        "del\x7f",
        "a\\b",
        "a:b",
        "what?",
        "star*",
        "br[acket",
        "main@{upstream}",
        "",
        "@",
        "HEAD@{1}",
        "main~1",
        "main^",
        ".hidden",
        "ends.lock",
        "double//slash",
        "x" * 256,
    ],
)
def test_it_refuses_hostile_or_malformed_refs(ref: str, marker: Path) -> None:
    with pytest.raises(InvalidInput) as refused:
        validate_ref(ref.replace("{marker}", str(marker)), field="branch")

    assert refused.value.field == "branch"


def test_it_names_the_revision_field_by_default() -> None:
    with pytest.raises(InvalidInput) as refused:
        validate_ref("main;touch /tmp/pwned")

    assert refused.value.field == "revision"
    assert not LITERAL_MARKER.exists()


# --------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/acme/shop.git",
        "http://git.internal/acme/shop.git",
        "https://x-access-token:secret@github.com/acme/shop.git",
        "ssh://git@github.com/acme/shop.git",
        "ssh://git@[::1]:2222/srv/shop.git",
        "git://git.kernel.org/pub/scm/git/git.git",
        "git@github.com:acme/shop.git",
        "deploy@build-host.internal:/srv/git/shop.git",
        "github.com:acme/shop.git",
    ],
)
def test_it_accepts_remote_repository_urls(url: str) -> None:
    assert validate_repository_url(url, allow_local=False) == url


@pytest.mark.parametrize(
    "url",
    [
        "ext::sh -c touch% {marker}",
        "ext::sh -c 'touch {marker}'",
        "EXT::sh",
        "fd::17",
        "::sh",
        "file:///etc",
        "file://{marker}",
        "/tmp/x",
        "./repo",
        "repo",
        "--upload-pack=touch {marker}",
        "-oProxyCommand=touch {marker}",
        "ssh://-oProxyCommand=touch%20{marker}/x",
        "https://github.com/acme/shop.git\n",
        "https://github.com/acme shop.git",
        "https://github.com/acme/\x00shop",
        "ftp://example.com/repo.git",
        "https:///no-host",
        "",
    ],
)
def test_it_refuses_hostile_or_local_urls(url: str, marker: Path) -> None:
    with pytest.raises(InvalidInput) as refused:
        validate_repository_url(url.replace("{marker}", str(marker)), allow_local=False)

    assert refused.value.field == "repository_url"


def test_it_accepts_local_repositories_only_when_allowed(tmp_path: Path) -> None:
    assert validate_repository_url("file:///srv/git/shop.git", allow_local=True)
    assert validate_repository_url("/srv/git/shop.git", allow_local=True)

    with pytest.raises(InvalidInput):
        validate_repository_url("ext::sh -c id", allow_local=True)
    with pytest.raises(InvalidInput):
        validate_repository_url("relative/path", allow_local=True)


def test_it_explains_why_a_transport_helper_is_refused() -> None:
    with pytest.raises(InvalidInput, match="ext::"):
        validate_repository_url("ext::sh -c id", allow_local=False)


def test_it_refuses_to_fetch_from_a_hostile_url_even_when_local_is_allowed(
    tmp_path: Path, marker: Path
) -> None:
    with pytest.raises(InvalidInput):
        Mirror(tmp_path / "m.git", f"ext::sh -c touch% {marker}", allow_local=True)


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        (
            "https://x-access-token:ghp_secret@github.com/acme/shop.git",
            "https://x-access-token:***@github.com/acme/shop.git",
        ),
        ("https://ghp_secret@github.com/acme/shop.git", "https://***@github.com/acme/shop.git"),
        ("https://github.com/acme/shop.git", "https://github.com/acme/shop.git"),
        ("ssh://git@github.com/acme/shop.git", "ssh://git@github.com/acme/shop.git"),
        ("git@github.com:acme/shop.git", "git@github.com:acme/shop.git"),
    ],
)
def test_it_redacts_credentials_in_urls(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


@pytest.mark.parametrize("subdirectory", ["/etc", "../up", "a/../../b", "", "a//b", "./a"])
def test_it_refuses_subdirectories_that_leave_the_tree(subdirectory: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        validate_subdirectory(subdirectory)

    assert refused.value.field == "subdirectory"


def test_it_canonicalises_a_subdirectory_with_a_trailing_slash() -> None:
    assert validate_subdirectory("site/web/") == "site/web"


# --------------------------------------------------------------------------- fetch and resolve


def test_a_branch_resolves_afresh_after_each_fetch_of_the_same_mirror(
    origin: GitRepo, mirror_of
) -> None:
    first = origin.commit({"README.md": "# Shop\n"}, "Initial commit")
    mirror = mirror_of(origin)
    mirror.fetch()
    assert mirror.resolve("main") == first
    assert mirror.resolve(first) == first
    assert mirror.gitlinks(first) == {}

    second = origin.commit({"app.py": "print('hi')\n"}, "Add app")
    mirror.fetch()
    assert mirror.resolve("main") == second, "a branch is not remembered"
    assert mirror.resolve(first) == first
    assert mirror.lfs_pointers(second) == {}


def test_it_fetches_and_resolves_branches_tags_and_shas(origin: GitRepo, mirror_of) -> None:
    first = origin.commit({"README.md": "# Shop\n"}, "Initial commit")
    origin.tag("v1.0.0", message="First release")
    second = origin.commit({"app.py": "print('hi')\n"}, "Add app")
    origin.tag("lightweight")
    origin.branch("feature/login")
    feature = origin.commit({"login.py": "pass\n"}, "Add login")
    mirror = mirror_of(origin)

    mirror.fetch()

    assert mirror.resolve("main") == second
    assert mirror.resolve("feature/login") == feature
    assert mirror.resolve("v1.0.0") == first  # annotated tag peeled to its commit
    assert mirror.resolve("lightweight") == second
    assert mirror.resolve(first[:7]) == first
    assert mirror.resolve(first) == first
    assert mirror.branch_head("main") == second
    assert mirror.branch_head("gone") is None


def test_it_follows_new_commits_deleted_branches_and_moved_tags(origin: GitRepo, mirror_of) -> None:
    origin.commit({"a.txt": "1"}, "One")
    origin.tag("stable")
    origin.branch("short-lived")
    origin.commit({"b.txt": "2"}, "Two")
    mirror = mirror_of(origin)
    mirror.fetch()
    origin.switch("main")
    origin.git("branch", "-D", "short-lived")
    newer = origin.commit({"a.txt": "3"}, "Three")
    origin.git("tag", "-f", "stable")

    mirror.fetch()

    assert mirror.resolve("main") == newer
    assert mirror.resolve("stable") == newer
    assert mirror.branch_head("short-lived") is None


def test_it_reports_fetch_progress_lines(origin: GitRepo, mirror_of) -> None:
    origin.commit({"a.txt": "1"}, "One")
    lines: list[str] = []

    mirror_of(origin).fetch(on_line=lines.append)

    assert any("main" in line for line in lines)


def test_it_names_an_unknown_revision(origin: GitRepo, mirror_of) -> None:
    origin.commit({"a.txt": "1"}, "One")
    mirror = mirror_of(origin)
    mirror.fetch()

    with pytest.raises(RevisionNotFound, match="'no-such-branch'"):
        mirror.resolve("no-such-branch")
    with pytest.raises(RevisionNotFound, match="deadbeefcafe"):
        mirror.resolve("deadbeefcafe")


def test_it_validates_a_ref_before_resolving_it(origin: GitRepo, mirror_of, marker: Path) -> None:
    origin.commit({"a.txt": "1"}, "One")
    mirror = mirror_of(origin)
    mirror.fetch()

    for hostile in (f"--output={marker}", f"main;touch {marker}", "-x"):
        with pytest.raises(InvalidInput):
            mirror.resolve(hostile)


def test_it_raises_a_repository_error_for_a_missing_repository(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "m.git", (tmp_path / "nothing-here").as_uri(), allow_local=True)

    with pytest.raises(RepositoryError, match="Could not fetch"):
        mirror.fetch()


def test_it_keeps_https_credentials_out_of_the_config_and_the_error(tmp_path: Path) -> None:
    # Port 9 on localhost: nothing listens, so the fetch fails fast without the network.
    mirror = Mirror(
        tmp_path / "m.git",
        "https://robot:url-secret@127.0.0.1:9/acme/shop.git",
        https_token="token-secret",
    )

    with pytest.raises(RepositoryError) as failure:
        mirror.fetch()

    config = (tmp_path / "m.git" / "config").read_text()
    assert "127.0.0.1:9/acme/shop.git" in config
    for secret in ("url-secret", "token-secret"):
        assert secret not in config
        assert secret not in str(failure.value)


def test_it_uses_a_temporary_key_file_for_ssh_and_removes_it(tmp_path: Path) -> None:
    mirror = Mirror(
        tmp_path / "m.git",
        "ssh://git@127.0.0.1:9/acme/shop.git",
        ssh_private_key="-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n"
        "-----END OPENSSH PRIVATE KEY-----",
        host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
    )
    before = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("slipway-key-*"))

    with pytest.raises(RepositoryError):
        mirror.fetch()

    assert set(Path(os.environ.get("TMPDIR", "/tmp")).glob("slipway-key-*")) == before
    assert "not-a-real-key" not in (tmp_path / "m.git" / "config").read_text()


# --------------------------------------------------------------------------- history


def test_it_describes_a_commit(origin: GitRepo, mirror_of) -> None:
    sha = origin.commit({"a.txt": "1"}, "Add the first file\n\nWith a body explaining why.")
    mirror = mirror_of(origin)
    mirror.fetch()

    commit = mirror.commit_info(sha[:10])

    assert commit.sha == sha
    assert sha.startswith(commit.short_sha)
    assert commit.author == "Alice Example"
    assert commit.email == "alice@example.com"
    assert commit.subject == "Add the first file"
    assert commit.message == "Add the first file\n\nWith a body explaining why."
    assert commit.date.tzinfo is not None
    assert abs((datetime.now(commit.date.tzinfo) - commit.date).total_seconds()) < 300


def test_it_lists_the_commits_between_two_deploys_newest_first(origin: GitRepo, mirror_of) -> None:
    deployed = origin.commit({"a.txt": "1"}, "One")
    second = origin.commit({"a.txt": "2"}, "Two")
    third = origin.commit({"a.txt": "3"}, "Three")
    mirror = mirror_of(origin)
    mirror.fetch()

    between = mirror.commits_between(deployed, "main")

    assert [commit.sha for commit in between] == [third, second]
    assert [commit.subject for commit in between] == ["Three", "Two"]
    assert [c.sha for c in mirror.commits_between(None, "main", limit=2)] == [third, second]
    assert mirror.commits_between(third, "main") == []


def test_it_finds_the_first_commit_time_of_a_deployed_range(origin: GitRepo, mirror_of) -> None:
    deployed = origin.commit({"a.txt": "1"}, "One")
    second = origin.commit({"a.txt": "2"}, "Two")
    third = origin.commit({"a.txt": "3"}, "Three")
    mirror = mirror_of(origin)
    mirror.fetch()

    first = mirror.first_commit_time(deployed, third)

    assert first == min(mirror.commit_info(second).date, mirror.commit_info(third).date)
    assert first is not None and first.tzinfo is not None
    assert mirror.first_commit_time(third, third) is None
    assert mirror.first_commit_time("0123456789abcdef0123456789abcdef01234567", third) is None


def test_it_falls_back_to_recent_history_when_the_old_revision_is_gone(
    origin: GitRepo, mirror_of
) -> None:
    only = origin.commit({"a.txt": "1"}, "One")
    mirror = mirror_of(origin)
    mirror.fetch()

    between = mirror.commits_between("0123456789abcdef0123456789abcdef01234567", "main")

    assert [commit.sha for commit in between] == [only]


def test_it_lists_changed_paths_between_revisions(origin: GitRepo, mirror_of) -> None:
    old = origin.commit({"a.txt": "1", "b.txt": "1", "docs/c.md": "1"}, "One")
    new = origin.commit({"a.txt": "2", "b.txt": None, "src/d.py": "1"}, "Two")
    mirror = mirror_of(origin)
    mirror.fetch()

    assert sorted(mirror.changed_paths(old, new)) == ["a.txt", "b.txt", "src/d.py"]
    assert sorted(mirror.changed_paths(None, old)) == ["a.txt", "b.txt", "docs/c.md"]


# --------------------------------------------------------------------------- export


def _tree(root: Path) -> dict[str, str]:
    """Each path under root with what it is: file content, link target or 'dir'."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                found[relative] = "-> " + os.readlink(path)
            elif path.is_dir():
                found[relative] = "dir"
            else:
                found[relative] = path.read_text()
    return found


def test_it_exports_exactly_one_revision_over_a_previous_one(
    origin: GitRepo, mirror_of, tmp_path: Path
) -> None:
    old = origin.commit({"keep.txt": "old", "stale.txt": "bye", "old/dir.txt": "x"}, "Old")
    new = origin.commit(
        {"keep.txt": "new", "stale.txt": None, "old/dir.txt": None, "bin/run": "#!/bin/sh\n"},
        "New",
        executable=["bin/run"],
        symlinks={"current-config": "config/prod.ini", "outside": "../../shared/uploads"},
    )
    mirror = mirror_of(origin)
    mirror.fetch()
    build = tmp_path / "build"
    mirror.export(old, build)
    (build / "untracked-leftover").write_text("from a build command")

    mirror.export(new, build)

    assert _tree(build) == {
        "keep.txt": "new",
        "bin": "dir",
        "bin/run": "#!/bin/sh\n",
        "current-config": "-> config/prod.ini",
        "outside": "-> ../../shared/uploads",
    }
    assert stat.S_IMODE((build / "bin" / "run").stat().st_mode) == 0o755
    assert stat.S_IMODE((build / "keep.txt").stat().st_mode) == 0o644


def test_it_exports_a_subdirectory_as_the_root(origin: GitRepo, mirror_of, tmp_path: Path) -> None:
    sha = origin.commit(
        {"site/index.html": "<h1>", "site/css/app.css": "body{}", "api/main.go": "package main"},
        "Monorepo",
    )
    mirror = mirror_of(origin)
    mirror.fetch()
    build = tmp_path / "build"

    mirror.export(sha, build, subdirectory="site/")

    assert _tree(build) == {"index.html": "<h1>", "css": "dir", "css/app.css": "body{}"}


def test_it_refuses_a_subdirectory_missing_from_the_revision(
    origin: GitRepo, mirror_of, tmp_path: Path
) -> None:
    sha = origin.commit({"site/index.html": "<h1>"}, "One")
    mirror = mirror_of(origin)
    mirror.fetch()

    with pytest.raises(InvalidInput, match="nope"):
        mirror.export(sha, tmp_path / "build", subdirectory="nope")
    with pytest.raises(InvalidInput):
        mirror.export(sha, tmp_path / "build", subdirectory="site/index.html")
    with pytest.raises(InvalidInput):
        mirror.export(sha, tmp_path / "build", subdirectory="../outside")


def test_it_exports_the_tree_as_committed_despite_export_attributes(
    origin: GitRepo, mirror_of, tmp_path: Path
) -> None:
    sha = origin.commit(
        {
            ".gitattributes": "secret.txt export-ignore\nversion.txt export-subst\n",
            "secret.txt": "kept",
            "version.txt": "$Format:%H$",
        },
        "Attributes",
    )
    mirror = mirror_of(origin)
    mirror.fetch()
    build = tmp_path / "build"

    mirror.export(sha, build)

    assert (build / "secret.txt").read_text() == "kept"
    assert (build / "version.txt").read_text() == "$Format:%H$"


def test_it_exports_the_committed_bytes_despite_eol_and_ident_attributes(
    origin: GitRepo, mirror_of, tmp_path: Path
) -> None:
    sha = origin.commit(
        {".gitattributes": "* text eol=crlf ident\n", "app.txt": "line one\nline two $Id$\n"},
        "Line endings",
    )
    mirror = mirror_of(origin)
    mirror.fetch()
    build = tmp_path / "build"

    mirror.export(sha, build)

    assert (build / "app.txt").read_bytes() == b"line one\nline two $Id$\n"


def test_it_leaves_submodules_out_of_an_export(
    git_repo_factory: GitRepoFactory, mirror_of, tmp_path: Path
) -> None:
    library = git_repo_factory("library")
    library.commit({"lib.txt": "library"}, "Library")
    app = git_repo_factory("app")
    app.commit({"app.txt": "app"}, "App")
    app.git("-c", "protocol.file.allow=always", "submodule", "add", "--quiet", library.url, "lib")
    sha = app.commit({}, "Add submodule")
    mirror = mirror_of(app)
    mirror.fetch()
    build = tmp_path / "build"

    mirror.export(sha, build)

    assert (build / "app.txt").read_text() == "app"
    assert not (build / "lib" / "lib.txt").exists()


# --------------------------------------------------------------------------- credentials sent


class _RecordingHandler(http.server.BaseHTTPRequestHandler):
    seen_authorization: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        type(self).seen_authorization.append(self.headers.get("Authorization"))
        self.send_response(404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def recording_http_server() -> Iterator[tuple[str, list[str | None]]]:
    seen: list[str | None] = []
    handler = type("Handler", (_RecordingHandler,), {"seen_authorization": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    serve_in_background(server)
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_it_sends_an_https_token_as_a_basic_authorization_header(
    tmp_path: Path, recording_http_server: tuple[str, list[str | None]]
) -> None:
    base_url, seen = recording_http_server
    mirror = Mirror(tmp_path / "m.git", f"{base_url}/acme/shop.git", https_token="token-secret")

    with pytest.raises(RepositoryError, match="not found") as failure:
        mirror.fetch()

    expected = "Basic " + base64.b64encode(b"x-access-token:token-secret").decode()
    assert seen == [expected]
    assert "token-secret" not in (tmp_path / "m.git" / "config").read_text()
    assert "token-secret" not in str(failure.value)


def test_it_sends_a_password_from_the_url_as_a_header_with_its_user(
    tmp_path: Path, recording_http_server: tuple[str, list[str | None]]
) -> None:
    base_url, seen = recording_http_server
    url = base_url.replace("http://", "http://robot:url-secret@") + "/acme/shop.git"

    with pytest.raises(RepositoryError):
        Mirror(tmp_path / "m.git", url).fetch()

    assert seen == ["Basic " + base64.b64encode(b"robot:url-secret").decode()]
    assert "url-secret" not in (tmp_path / "m.git" / "config").read_text()


def _ssh_url(target: SSHTarget, repo: GitRepo) -> str:
    return f"ssh://{target.username}@{target.hostname}:{target.port}{repo.path}"


@pytest.fixture
def ssh_origin(sshd_target: SSHTarget) -> GitRepo:
    """A repository the target's login user owns (git refuses to serve another user's)."""
    repo = GitRepo(sshd_target.root / "repos" / "origin")
    repo.commit({"README": "served over ssh\n"}, "Start")
    return repo


def _hand_over(repo: GitRepo, target: SSHTarget) -> None:
    subprocess.run(["chown", "-R", target.username, str(repo.path)], check=True)


def _host_key(target: SSHTarget) -> str:
    """The target's host key as the project stores it once trusted: "<type> <base64>"."""
    return " ".join(target.host_public_key_path.read_text().split()[:2])


def test_it_fetches_over_ssh_with_a_deploy_key_and_pins_the_host_key(
    ssh_origin: GitRepo, sshd_target: SSHTarget, tmp_path: Path
) -> None:
    origin = ssh_origin
    sha = origin.commit({"a.txt": "1"}, "One")
    _hand_over(origin, sshd_target)
    mirror = Mirror(
        tmp_path / "m.git",
        _ssh_url(sshd_target, origin),
        ssh_private_key=sshd_target.client_private_key,
        host_key=_host_key(sshd_target),
    )

    mirror.fetch()
    mirror.fetch()

    assert mirror.resolve("main") == sha
    assert mirror.known_hosts_path.read_text() == (
        f"[127.0.0.1]:{sshd_target.port} {_host_key(sshd_target)}\n"
    )
    assert sshd_target.client_private_key.strip() not in (tmp_path / "m.git" / "config").read_text()


def test_it_reports_a_refused_deploy_key(
    ssh_origin: GitRepo, sshd_target: SSHTarget, tmp_path: Path
) -> None:
    origin = ssh_origin
    origin.commit({"a.txt": "1"}, "One")
    _hand_over(origin, sshd_target)
    stranger = generate_key_pair(tmp_path / "keys", "stranger")
    mirror = Mirror(
        tmp_path / "m.git",
        _ssh_url(sshd_target, origin),
        ssh_private_key=stranger.private_key,
        host_key=_host_key(sshd_target),
    )

    with pytest.raises(RepositoryError, match="refused our credentials"):
        mirror.fetch()


def test_it_refuses_a_host_whose_key_differs_from_the_pinned_one(
    ssh_origin: GitRepo, sshd_target: SSHTarget, tmp_path: Path
) -> None:
    _hand_over(ssh_origin, sshd_target)
    other_host = generate_key_pair(tmp_path / "keys", "other_host")
    mirror = Mirror(
        tmp_path / "m.git",
        _ssh_url(sshd_target, ssh_origin),
        ssh_private_key=sshd_target.client_private_key,
        host_key=" ".join(other_host.public_key.split()[:2]),
    )

    with pytest.raises(HostKeyMismatch) as changed:
        mirror.fetch()

    message = str(changed.value)
    assert f"127.0.0.1:{sshd_target.port} has changed" in message
    assert f"pinned {other_host.fingerprint}" in message
    assert f"offered {sshd_target.host_key_fingerprint}" in message
    assert mirror.resolve_or_none("main") is None


def test_an_ssh_repository_without_a_trusted_host_key_is_refused_showing_the_key(
    ssh_origin: GitRepo, sshd_target: SSHTarget, tmp_path: Path
) -> None:
    _hand_over(ssh_origin, sshd_target)
    mirror = Mirror(
        tmp_path / "m.git",
        _ssh_url(sshd_target, ssh_origin),
        ssh_private_key=sshd_target.client_private_key,
    )

    with pytest.raises(HostKeyNotTrusted) as untrusted:
        mirror.fetch()

    message = str(untrusted.value)
    assert f"127.0.0.1:{sshd_target.port} offered the host key ssh-ed25519" in message
    assert sshd_target.host_key_fingerprint in message
    assert "trusts it in the project's repository settings" in message
    assert not (tmp_path / "m.git" / "HEAD").exists(), "nothing fetched, no key recorded"


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("git@github.com:acme/shop.git", ("github.com", 22)),
        ("ssh://git@git.example.com:2222/acme/shop.git", ("git.example.com", 2222)),
        ("ssh://git@[::1]:2200/srv/shop.git", ("::1", 2200)),
        ("deploy@[::1]:srv/shop.git", ("::1", 22)),
    ],
)
def test_it_finds_the_host_and_port_ssh_connects_to(url: str, host: tuple[str, int]) -> None:
    assert ssh_host_of(url) == host


def _hostile_tar(*members: tuple[str, bytes | str]) -> io.BytesIO:
    """A tar whose members are files (bytes) or symlinks (str target)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            if isinstance(payload, str):
                info.type = tarfile.SYMTYPE
                info.linkname = payload
                archive.addfile(info)
            else:
                info.size = len(payload)
                archive.addfile(info, io.BytesIO(payload))
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize(
    "members",
    [
        (("../escaped.txt", b"x"),),
        (("/absolute.txt", b"x"),),
        (("a/../../escaped.txt", b"x"),),
        (("link", "{outside}"), ("link/escaped.txt", b"x")),
    ],
)
def test_it_never_writes_an_archive_member_outside_the_export(
    members: tuple[tuple[str, bytes | str], ...], tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest" / "build"
    dest.mkdir(parents=True)
    resolved = tuple(
        (name, payload.replace("{outside}", str(outside)) if isinstance(payload, str) else payload)
        for name, payload in members
    )

    with pytest.raises(RepositoryError):
        _extract_tar_stream(_hostile_tar(*resolved), dest)

    assert list(outside.iterdir()) == []
    assert not (tmp_path / "dest" / "escaped.txt").exists()
    assert not Path("/absolute.txt").exists()


def test_a_commit_dated_beyond_what_python_holds_fails_nothing(origin: GitRepo, mirror_of) -> None:
    # git commit and git fsck take the year 10000; datetime.fromisoformat refused it, and
    # every deployment listing the commit failed with an internal error (the deploy page
    # answered 500).
    deployed = origin.commit({"a.txt": "1"}, "One")
    origin.git("commit", "-q", "--allow-empty", "--date=@253402400000 +0000", "-m", "Odd clock")
    odd = origin.head()
    mirror = mirror_of(origin)
    mirror.fetch()

    [listed] = mirror.commits_between(deployed, odd)
    assert listed.subject == "Odd clock" and listed.date.tzinfo is not None
    assert mirror.commits_between(None, odd, limit=5)[0].sha == odd
    assert mirror.commit_info(odd).sha == odd
    assert mirror.first_commit_time(deployed, odd) is None


@pytest.mark.parametrize(
    ("printed", "expected"),
    [
        ("2026-12-02T10:00:00+01:00", datetime(2026, 12, 2, 9, 0, tzinfo=UTC)),
        # Zones git keeps from old imports (hash-object writes them) that Python refuses.
        ("2023-11-13T22:13:20-24:00", datetime(2023, 11, 13, 22, 13, 20, tzinfo=UTC)),
        ("2023-11-19T02:12:20+99:59", datetime(2023, 11, 19, 2, 12, 20, tzinfo=UTC)),
        ("10000-01-02T03:33:20+00:00", None),
        ("%aI", None),
    ],
)
def test_an_author_date_python_cannot_hold_is_read_or_left_out(printed, expected) -> None:
    from builds.engine.git import _git_date

    assert _git_date(printed) == expected
