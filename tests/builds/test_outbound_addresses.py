"""Repository URLs and servers' SSH hosts follow the one outbound-address policy: checked when
saved and again right before each fetch or connection; a local repository never points into
Slipway's own data or build directory.

The Git server here is a dumb-HTTP server on loopback (a bare repository behind Python's
http.server), allowed only where the operator sets SLIPWAY_ALLOW_PRIVATE_REPOSITORIES.
"""

from __future__ import annotations

import http.server
import subprocess
from functools import partial
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from builds import services
from builds.engine.errors import InvalidInput
from builds.models import Deployment, Status
from builds.tasks import run_deployment
from projects.services import project_register, project_update
from servers.health import health_check_clean
from servers.services import server_check, server_create
from tests.support.gitrepos import hermetic_git_environment
from tests.support.webserve import serve_in_background

# Alice registers the projects here, which takes a site admin (docs/users.md).
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("site_admin")]


class _DumbGitServer:
    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), partial(Handler, directory=str(root))
        )
        self.port = self.httpd.server_address[1]
        serve_in_background(self.httpd)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_repository(git_repo_factory, tmp_path):
    """(repo, URL of its bare copy on a loopback dumb-HTTP server, the server)."""
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    served = tmp_path / "served"
    bare = served / "shop.git"
    environment = hermetic_git_environment()
    subprocess.run(
        ["git", "clone", "--bare", "-q", str(repo.path), str(bare)], check=True, env=environment
    )
    subprocess.run(["git", "-C", str(bare), "update-server-info"], check=True, env=environment)
    server = _DumbGitServer(served)
    yield repo, f"http://127.0.0.1:{server.port}/shop.git", server
    server.stop()


def _deploy(project, server, alice) -> Deployment:
    deployment = services.deployment_create(project=project, servers=[server], user=alice)
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    return deployment


def test_a_loopback_git_server_is_fetched_from_where_the_operator_allows_it(
    http_repository, sshd_target, server_factory, alice, settings
):
    settings.ALLOW_PRIVATE_REPOSITORIES = True
    _repo, url, git_server = http_repository
    project = project_register(owner=alice, name="Shop", repository_url=url)
    server = server_factory(project, sshd_target)

    deployment = _deploy(project, server, alice)

    assert deployment.status == Status.SUCCEEDED, deployment.error
    assert (sshd_target.deploy_path / "current" / "index.html").read_text() == "A\n"
    assert git_server.requests


def test_a_loopback_git_server_is_refused_when_saved_where_the_operator_does_not_allow_it(
    http_repository, alice, settings
):
    settings.ALLOW_PRIVATE_REPOSITORIES = False
    _repo, url, git_server = http_repository

    with pytest.raises(InvalidInput, match="SLIPWAY_ALLOW_PRIVATE_REPOSITORIES=true") as refused:
        project_register(owner=alice, name="Shop", repository_url=url)

    assert refused.value.field == "repository_url"
    assert git_server.requests == []


def test_the_address_is_checked_again_right_before_the_fetch(
    http_repository, sshd_target, server_factory, alice, settings
):
    settings.ALLOW_PRIVATE_REPOSITORIES = True
    _repo, url, git_server = http_repository
    project = project_register(owner=alice, name="Shop", repository_url=url)
    server = server_factory(project, sshd_target)
    # Saving asked the server for its branches (git ls-remote): only the fetch counts here.
    git_server.requests.clear()
    # The operator turns the setting off (or the name now resolves to 127.0.0.1).
    settings.ALLOW_PRIVATE_REPOSITORIES = False

    deployment = _deploy(project, server, alice)

    assert deployment.status == Status.FAILED
    assert "127.0.0.1 is a loopback address" in deployment.error
    assert git_server.requests == []
    assert not (sshd_target.deploy_path / "current").exists()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/shop.git",
        "https://2130706433/shop.git",
        "git://0177.0.0.1/shop.git",
        "http://0x7f.1/shop.git",
        "ssh://git@127.1/acme/shop.git",
        "git@[::ffff:7f00:1]:acme/shop.git",
        "git@10.1:acme/shop.git",
        "https://[::1]:8443/shop.git",
        "ssh://git@localhost:2222/shop.git",
        "https://192.168.1.20/shop.git",
    ],
)
def test_loopback_and_private_repository_hosts_in_any_form_need_the_setting(alice, settings, url):
    settings.ALLOW_PRIVATE_REPOSITORIES = False
    with pytest.raises(InvalidInput, match="SLIPWAY_ALLOW_PRIVATE_REPOSITORIES"):
        project_register(owner=alice, name="Shop", repository_url=url)
    settings.ALLOW_PRIVATE_REPOSITORIES = True
    assert project_register(owner=alice, name="Shop", repository_url=url).repository_url == url


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data.git",
        "https://0xa9fea9fe/x.git",
        "git://[::ffff:169.254.169.254]/x.git",
        "ssh://git@[fe80::1%25eth0]/x.git",
        "git@[fd00:ec2::254]:x.git",
        "https://100.100.100.200/x.git",
        "http://[64:ff9b::a9fe:a9fe]/x.git",
        "git@0.0.0.0:x.git",
    ],
)
def test_metadata_and_link_local_repository_hosts_are_refused_whatever_the_setting(
    alice, settings, url
):
    settings.ALLOW_PRIVATE_REPOSITORIES = True
    with pytest.raises(InvalidInput) as refused:
        project_register(owner=alice, name="Shop", repository_url=url)
    assert refused.value.field == "repository_url"


def test_a_public_repository_host_is_accepted(alice, settings):
    settings.ALLOW_PRIVATE_REPOSITORIES = False
    project = project_register(owner=alice, name="Shop", repository_url="https://1.1.1.1/a.git")
    assert project.repository_url == "https://1.1.1.1/a.git"


# --------------------------------------------------------------------------- local repositories


def _own_directories() -> list[Path]:
    return [Path(django_settings.DATA_DIR), Path(django_settings.BUILD_DIR)]


def test_a_local_repository_inside_slipways_directories_is_refused(alice, tmp_path):
    build_dir = Path(django_settings.BUILD_DIR)
    other_mirror = build_dir / "project-999" / "mirror.git"
    other_mirror.mkdir(parents=True, exist_ok=True)
    link = tmp_path / "innocent.git"
    link.symlink_to(other_mirror)
    for url in (
        str(other_mirror),
        other_mirror.as_uri(),
        str(build_dir),
        str(django_settings.DATA_DIR),
        str(build_dir / ".." / "builds" / "project-999" / "mirror.git"),
        str(link),  # a symlink resolved into the build directory
        link.as_uri(),
        "file://" + str(other_mirror).replace("/mirror.git", "/%6Dirror.git"),
        "file://localhost" + str(other_mirror),
    ):
        with pytest.raises(InvalidInput, match="Slipway's own data or build directory") as refused:
            project_register(owner=alice, name="Shop", repository_url=url)
        assert refused.value.field == "repository_url"


def test_a_local_repository_that_leads_git_into_slipways_directories_is_refused(alice, tmp_path):
    other_mirror = Path(django_settings.BUILD_DIR) / "project-998" / "mirror.git"
    (other_mirror / "objects").mkdir(parents=True, exist_ok=True)
    # A .git file naming another project's mirror as its git directory.
    through_gitdir = tmp_path / "gitdir-repo"
    through_gitdir.mkdir()
    (through_gitdir / ".git").write_text(f"gitdir: {other_mirror}\n")
    # Objects borrowed from it through alternates, one hop removed.
    hop = tmp_path / "hop.git"
    (hop / "objects" / "info").mkdir(parents=True)
    (hop / "objects" / "info" / "alternates").write_text(f"{other_mirror / 'objects'}\n")
    through_alternates = tmp_path / "alternates-repo.git"
    (through_alternates / "objects" / "info").mkdir(parents=True)
    (through_alternates / "objects" / "info" / "alternates").write_text(
        "# borrowed\n../../hop.git/objects\n"
    )
    # The same line C-quoted, as git also reads it.
    quoted = tmp_path / "quoted-repo.git"
    (quoted / "objects" / "info").mkdir(parents=True)
    (quoted / "objects" / "info" / "alternates").write_text(f'"{other_mirror}/obj\\145cts"\n')
    for path in (through_gitdir, through_alternates, quoted):
        with pytest.raises(InvalidInput, match="Slipway's own data or build directory"):
            project_register(owner=alice, name="Shop", repository_url=str(path))


def test_a_relative_file_url_is_refused(alice):
    """git would read it from the worker's working directory, possibly Slipway's own."""
    with pytest.raises(InvalidInput, match="absolute path"):
        project_register(owner=alice, name="Shop", repository_url="file://var/builds/x.git")


def test_a_local_repository_elsewhere_is_accepted(alice, git_repo_factory):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    assert project_register(owner=alice, name="Shop", repository_url=repo.url).pk


def test_a_symlink_moved_into_slipways_directories_after_saving_is_refused_at_fetch(
    git_repo_factory, sshd_target, server_factory, alice, tmp_path
):
    """The victim's mirror holds another project's code; re-pointing the link must not reach it."""
    repo = git_repo_factory()
    repo.commit({"index.html": "mine\n"}, "mine")
    link = tmp_path / "repository"
    link.symlink_to(repo.path)
    project = project_register(owner=alice, name="Shop", repository_url=str(link))
    server = server_factory(project, sshd_target)
    victim = Path(django_settings.BUILD_DIR) / "project-999" / "mirror.git"
    victim.mkdir(parents=True, exist_ok=True)
    link.unlink()
    link.symlink_to(victim)

    deployment = _deploy(project, server, alice)

    assert deployment.status == Status.FAILED
    assert "Slipway's own data or build directory" in deployment.error
    assert not (sshd_target.deploy_path / "current").exists()


def test_changing_the_url_into_slipways_directories_is_refused(alice, git_repo_factory):
    repo = git_repo_factory()
    project = project_register(owner=alice, name="Shop", repository_url=repo.url)
    with pytest.raises(InvalidInput):
        project_update(project=project, actor=alice, repository_url=str(django_settings.BUILD_DIR))


# --------------------------------------------------------------------------- servers' SSH hosts


@pytest.mark.parametrize(
    "hostname", ["169.254.169.254", "0xa9fea9fe", "::ffff:169.254.169.254", "fe80::1", "0"]
)
def test_a_server_on_a_metadata_or_link_local_address_is_refused(alice, git_repo_factory, hostname):
    project = project_register(owner=alice, name="Shop", repository_url="https://1.1.1.1/a.git")
    with pytest.raises(InvalidInput) as refused:
        server_create(
            project=project,
            actor=alice,
            name="web1",
            hostname=hostname,
            username="deploy",
            deploy_path="/srv/shop",
        )
    assert refused.value.field == "hostname"


def test_a_loopback_server_is_refused_where_the_operator_does_not_allow_private_servers(
    alice, settings
):
    settings.ALLOW_PRIVATE_SERVERS = False
    project = project_register(owner=alice, name="Shop", repository_url="https://1.1.1.1/a.git")
    with pytest.raises(InvalidInput, match="SLIPWAY_ALLOW_PRIVATE_SERVERS=true"):
        server_create(
            project=project,
            actor=alice,
            name="web1",
            hostname="0177.0.0.1",
            username="deploy",
            deploy_path="/srv/shop",
        )


def test_a_server_allowed_when_saved_is_checked_again_before_connecting(
    git_repo_factory, sshd_target, project_factory, server_factory, alice, settings
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    settings.ALLOW_PRIVATE_SERVERS = False

    check = server_check(server=server)
    deployment = _deploy(project, server, alice)

    assert not check.ok and "SLIPWAY_ALLOW_PRIVATE_SERVERS=true" in check.error
    assert deployment.status == Status.FAILED
    assert "loopback address" in deployment.error
    assert not (sshd_target.deploy_path / "current").exists()


# --------------------------------------------------------------------------- health checks


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/",
        "http://0xa9fea9fe/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://[fe80::1]/",
    ],
)
def test_a_health_check_at_a_metadata_address_is_refused_when_saved(url):
    with pytest.raises(InvalidInput) as refused:
        health_check_clean({"kind": "http", "url": url})
    assert refused.value.field == "url"


def test_a_health_check_on_loopback_follows_the_servers_setting(settings):
    assert health_check_clean({"kind": "http", "url": "http://127.1:8080/health"})
    settings.ALLOW_PRIVATE_SERVERS = False
    with pytest.raises(InvalidInput, match="SLIPWAY_ALLOW_PRIVATE_SERVERS=true"):
        health_check_clean({"kind": "http", "url": "http://127.1:8080/health"})
    # A name (it may hold %server%) is checked before each attempt instead.
    assert health_check_clean({"kind": "http", "url": "http://%server%:8080/health"})


class _Redirector:
    """A loopback web server that redirects every request to ``location`` + its path."""

    def __init__(self, location: str) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                self.send_response(302)
                self.send_header("Location", location + self.path.removeprefix("/moved"))
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/moved"
        serve_in_background(self.httpd)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_git_never_follows_a_redirect_to_an_address_slipway_did_not_check(
    http_repository, sshd_target, server_factory, alice, settings
):
    """Only the URL's own host is checked before the fetch, so git must not go elsewhere."""
    settings.ALLOW_PRIVATE_REPOSITORIES = True
    _repo, url, git_server = http_repository
    redirector = _Redirector(url.removesuffix("/shop.git"))
    try:
        project = project_register(
            owner=alice, name="Shop", repository_url=redirector.url + "/shop.git"
        )
        server = server_factory(project, sshd_target)
        deployment = _deploy(project, server, alice)
    finally:
        redirector.stop()

    assert deployment.status == Status.FAILED
    assert redirector.requests and git_server.requests == []
