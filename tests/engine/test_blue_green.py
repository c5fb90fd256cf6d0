"""Blue-green through a real nginx router on loopback (reached over SSH like any server),
in front of two app servers (sshd targets) that each serve their `current` over HTTP."""

from __future__ import annotations

import dataclasses
import http.client
import threading
import time
from urllib.parse import urlsplit

import pytest

from builds.engine import pipeline, router
from builds.engine.errors import InvalidInput
from builds.engine.health import HealthCheckSpec
from builds.engine.specs import ConfigFileSpec, StrategySpec
from tests.support.engine import RecordingReporter, after, deploy_spec, server_for
from tests.support.nginx import UPSTREAM


@dataclasses.dataclass
class Bed:
    blue_target: object
    green_target: object
    blue: pipeline.ServerSpec
    green: pipeline.ServerSpec
    nginx: object
    router: router.RouterSpec
    checks: tuple[HealthCheckSpec, ...]


@pytest.fixture
def bed(sshd_factory, release_server_factory, nginx_factory):
    blue_target, green_target, router_target = sshd_factory(), sshd_factory(), sshd_factory()
    blue_web = release_server_factory(blue_target.deploy_path)
    green_web = release_server_factory(green_target.deploy_path)
    blue = server_for(
        blue_target, 1, name="blue1", colour="blue", upstream=f"127.0.0.1:{blue_web.port}"
    )
    green = server_for(
        green_target, 2, name="green1", colour="green", upstream=f"127.0.0.1:{green_web.port}"
    )
    # nginx runs as the router's login user, so that user may test and reload it.
    nginx = nginx_factory(router_target.root / "nginx", router_target.username, blue.upstream)
    spec = router.RouterSpec(
        name="lb1",
        endpoint=router_target.endpoint(),
        include_path=str(nginx.include_path),
        upstream_name=UPSTREAM,
        nginx_command=nginx.nginx_command,
    )
    checks = tuple(
        HealthCheckSpec(
            kind="http",
            url=f"{web.url}/health.txt",
            body_contains="healthy",
            retries=2,
            interval_seconds=0.2,
            timeout_seconds=2,
            server_ids=frozenset({server.id}),
        )
        for web, server in ((blue_web, blue), (green_web, green))
    )
    return Bed(blue_target, green_target, blue, green, nginx, spec, checks)


def _health(unhealthy: frozenset[int] = frozenset()) -> tuple[ConfigFileSpec, ...]:
    return (
        ConfigFileSpec(
            path="health.txt", body="healthy\n", server_ids=frozenset({1, 2}) - unhealthy
        ),
        *(
            [ConfigFileSpec(path="health.txt", body="unhealthy\n", server_ids=unhealthy)]
            if unhealthy
            else []
        ),
    )


def _deploy(bed, repo, tmp_path, revision, live, *, deployment_id, unhealthy=frozenset()):
    reporter = RecordingReporter()
    result = pipeline.deploy(
        deploy_spec(
            repo,
            tmp_path,
            [bed.blue, bed.green],
            revision,
            deployment_id=deployment_id,
            config_files=_health(unhealthy),
            health_checks=bed.checks,
            strategy=StrategySpec(kind="blue_green", live_colour=live, router=bed.router),
        ),
        reporter,
    )
    return result, reporter


def _get(url: str) -> tuple[int, str]:
    """One GET on a new connection (a failed one answers status 0 and the error)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    try:
        connection.request("GET", parts.path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    except OSError as error:
        return 0, str(error)
    finally:
        connection.close()


class Hammer:
    """GETs the router in a loop on new connections until stopped; keeps every answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.answers.append(_get(self.url))

    def stop(self) -> list[tuple[int, str]]:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.answers


def _eventually(url: str, expected: tuple[int, str]) -> tuple[int, str]:
    """``nginx -s reload`` only signals the master: the new workers take over a moment later."""
    deadline = time.monotonic() + 5
    while (answer := _get(url)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return answer


def _live(target) -> str:
    current = target.deploy_path / "current"
    return current.resolve().name if current.is_symlink() else ""


def _ok(result) -> bool:
    """Every server of the idle colour succeeded (the live colour's are skipped)."""
    return all(r.ok or r.skipped for r in result.servers) and any(r.ok for r in result.servers)


def _routed(result, server_id) -> bool:
    return next(r for r in result.servers if r.server_id == server_id).routed


def test_requests_never_fail_while_the_traffic_moves_to_green_and_back(
    bed, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit({"index.html": "A\n"}, "A")
    first, _ = _deploy(bed, repo, tmp_path, a, "", deployment_id=1)
    assert _routed(first, 1) and not _routed(first, 2), first.servers
    assert next(r for r in first.servers if r.server_id == 2).skipped
    assert _eventually(f"{bed.nginx.url}/index.html", (200, "A\n")) == (200, "A\n")
    blue_release = _live(bed.blue_target)

    bed.blue = after(first, bed.blue)
    b = repo.commit({"index.html": "B\n"}, "B")
    hammer = Hammer(f"{bed.nginx.url}/index.html")
    second, reporter = _deploy(bed, repo, tmp_path, b, "blue", deployment_id=2)
    assert _eventually(f"{bed.nginx.url}/index.html", (200, "B\n")) == (200, "B\n")
    answers = hammer.stop()

    assert _ok(second), [r.error for r in second.servers]
    assert _routed(second, 2) and not _routed(second, 1)
    assert answers and all(status == 200 for status, _ in answers), {
        a for a in answers if a[0] != 200
    }
    assert {body for _, body in answers} <= {"A\n", "B\n"}
    # Old workers finish what they accepted, so A and B may interleave for a moment.
    assert _live(bed.blue_target) == blue_release, "blue is kept as it was"
    assert "Traffic switched: green is live" in reporter.text
    include = bed.nginx.include_path.read_text()
    assert f"server {bed.green.upstream};" in include and bed.blue.upstream not in include

    # Switch back: one switch of the router, no deployment.
    hammer = Hammer(f"{bed.nginx.url}/index.html")
    lines: list[str] = []
    router.switch(bed.router, colour="blue", hosts=[bed.blue.upstream], log=lines.append)
    assert _eventually(f"{bed.nginx.url}/index.html", (200, "A\n")) == (200, "A\n")
    answers = hammer.stop()
    assert all(status == 200 for status, _ in answers), answers
    assert not list(bed.nginx.include_path.parent.glob("*.slipway-*")), "no temporary file left"


def test_an_unhealthy_green_never_receives_traffic(bed, git_repo_factory, tmp_path):
    repo = git_repo_factory()
    first, _ = _deploy(
        bed, repo, tmp_path, repo.commit({"index.html": "A\n"}, "A"), "", deployment_id=1
    )
    assert _ok(first)
    bed.blue = after(first, bed.blue)
    include_before = bed.nginx.include_path.read_bytes()
    b = repo.commit({"index.html": "B\n"}, "B")

    hammer = Hammer(f"{bed.nginx.url}/index.html")
    second, reporter = _deploy(
        bed, repo, tmp_path, b, "blue", deployment_id=2, unhealthy=frozenset({2})
    )
    answers = hammer.stop()

    assert not _ok(second)
    green = next(r for r in second.servers if r.server_id == 2)
    assert "Health check" in str(green.error or green.reason)
    assert not green.routed
    assert answers and all(answer == (200, "A\n") for answer in answers), set(answers)
    assert bed.nginx.include_path.read_bytes() == include_before
    assert "Not switching the traffic to green" in reporter.text
    assert "switch traffic" not in [name for name, _, _ in reporter.steps]


def test_nginx_refusing_the_new_upstream_restores_the_old_file_and_names_the_router(
    bed, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    first, _ = _deploy(
        bed, repo, tmp_path, repo.commit({"index.html": "A\n"}, "A"), "", deployment_id=1
    )
    assert _ok(first)
    bed.blue = after(first, bed.blue)
    include_before = bed.nginx.include_path.read_bytes()
    # A name nginx cannot resolve: `nginx -t` refuses the whole configuration.
    bed.green = dataclasses.replace(bed.green, upstream="green.invalid:80")
    b = repo.commit({"index.html": "B\n"}, "B")

    second, reporter = _deploy(bed, repo, tmp_path, b, "blue", deployment_id=2)

    assert not _ok(second)
    green = next(r for r in second.servers if r.server_id == 2)
    message = str(green.error)
    assert isinstance(green.error, router.RouterFailed)
    assert "lb1" in message and str(bed.router.endpoint.port) in message, message
    assert "green.invalid" in message, "nginx's own message is quoted"
    assert green.switched and not green.routed, "the release is on green, without traffic"
    assert bed.nginx.include_path.read_bytes() == include_before
    assert _get(f"{bed.nginx.url}/index.html") == (200, "A\n")
    assert "blue stays live" in reporter.text


def test_a_custom_switch_command_gets_the_colour_and_its_hosts_quoted(sshd_factory, tmp_path):
    target = sshd_factory()
    out = target.deploy_path / "switched"
    spec = router.RouterSpec(
        name="haproxy1",
        endpoint=target.endpoint(),
        kind=router.COMMAND,
        switch_command=f"printf '%s\\n' %colour% %hosts% > {out}",
    )
    router.switch(spec, colour="green", hosts=["10.0.0.5:8080", "app-2.internal:80"], log=print)
    assert out.read_text().splitlines() == ["green", "10.0.0.5:8080", "app-2.internal:80"]

    failing = dataclasses.replace(spec, switch_command="echo no backend; exit 3")
    with pytest.raises(router.RouterFailed, match=r"haproxy1 .*exited with 3: no backend"):
        router.switch(failing, colour="blue", hosts=["10.0.0.5:8080"], log=print)


def test_hosts_that_are_not_host_port_never_reach_the_router():
    for bad in ("10.0.0.5", "a b:80", "x;y:80", "host:0", "[::1:80", "}:80"):
        with pytest.raises(InvalidInput):
            router.validate_upstream(bad)
    assert router.validate_upstream("[::1]:8080") == "[::1]:8080"


def test_the_nginx_command_is_words_never_shell_code(sshd_factory):
    target = sshd_factory()
    marker = target.deploy_path / "injected"
    include = target.deploy_path / "app.conf"
    include.write_text("upstream slipway_app { server 10.0.0.5:80; }\n")
    spec = router.RouterSpec(
        name="lb1",
        endpoint=target.endpoint(),
        include_path=str(include),
        upstream_name=UPSTREAM,
        nginx_command=f"true; touch {marker}",
    )
    with pytest.raises(router.RouterFailed, match="refused the new upstream file"):
        router.switch(spec, colour="green", hosts=["10.0.0.6:80"], log=print)
    assert not marker.exists()
    assert include.read_text() == "upstream slipway_app { server 10.0.0.5:80; }\n"
