"""docker-compose.yml without Docker: every Slipway service's own command (and healthcheck),
started as the file says against the test database and Redis, does its job.

The file itself is checked by `make lint` (`docker-compose config -q`); here each service's
command runs with the environment it names, where only the addresses (database, Redis, the
port) and the data volume are the test bed's. Scaled-out mode only, as CI runs it."""

from __future__ import annotations

import re
import shelve
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families

from builds import services
from builds.models import Kind, Status, WebhookDelivery
from builds.tasks import prune_old_records
from deployer.celery import app
from deployer.models import OutboxMessage
from tests.support.processes import (
    ROOT,
    clean_env,
    free_port,
    require_scaled_out,
    shared_test_database_url,
    stop,
    stop_all,
    wait_for_http,
)

pytestmark = pytest.mark.django_db(transaction=True)

COMPOSE_FILE = ROOT / "docker-compose.yml"
# Run by their own images, not by Slipway's commands.
INFRASTRUCTURE = {"postgres", "redis"}
# The data volume every Slipway service mounts.
VOLUME = "/var/lib/slipway"
METRICS_TOKEN = "compose-test-metrics-token-0123"
READY_TIMEOUT = 90
JOB_TIMEOUT = 120


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def slipway_services() -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose()["services"].items()
        if name not in INFRASTRUCTURE
    }


def celery_role(service: dict[str, Any]) -> str:
    """ "worker", "beat", or "" for a service that is not a Celery process."""
    command = service["command"]
    if command[:3] == ["celery", "-A", "deployer"]:
        return str(command[3])
    return ""


def consumed_queues(service: dict[str, Any]) -> set[str]:
    command = service["command"]
    return set(command[command.index("-Q") + 1].split(","))


_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?::?([-?])([^}]*))?\}")


def interpolate(text: str, variables: dict[str, str]) -> str:
    """Compose's interpolation: ${NAME}, ${NAME:-default}, ${NAME:?error}, and $$ for $."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.groups()
        value = variables.get(name, "")
        if operator == "-":
            return value or argument
        if operator == "?" and not value:
            raise AssertionError(f"docker-compose.yml needs {name}: {argument}")
        return value

    return _VARIABLE.sub(replace, text)


@dataclass
class Stack:
    """The compose file's Slipway services as local processes, sharing one data directory."""

    data_dir: Path
    variables: dict[str, str]
    processes: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    envs: dict[str, dict[str, str]] = field(default_factory=dict)

    def env_of(self, name: str) -> dict[str, str]:
        service = slipway_services()[name]
        env = clean_env()
        env.update(
            {
                key: interpolate(str(value), self.variables)
                for key, value in service["environment"].items()
            }
        )
        env.update(
            DATABASE_URL=shared_test_database_url(),
            REDIS_URL=settings.REDIS_URL,
            SLIPWAY_DATA_DIR=str(self.data_dir),
            # The tests' repositories are folders on this machine.
            SLIPWAY_ALLOW_LOCAL_REPOSITORIES="true",
            # The image's `python` and `celery`, and its working directory (/app) on the path.
            PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
            PYTHONPATH=str(ROOT),
            # Docker sets it to the container's host name, which Celery's %h is too.
            HOSTNAME=socket.gethostname(),
        )
        if "SLIPWAY_BIND" in env:
            env["SLIPWAY_BIND"] = f"127.0.0.1:{free_port()}"
        return env

    def argv(self, words: list[str]) -> list[str]:
        return [
            interpolate(word, self.variables).replace(VOLUME, str(self.data_dir)) for word in words
        ]

    def run_once(self, name: str) -> subprocess.CompletedProcess[str]:
        self.envs[name] = self.env_of(name)
        return subprocess.run(
            self.argv(slipway_services()[name]["command"]),
            cwd=ROOT,
            env=self.envs[name],
            capture_output=True,
            text=True,
            timeout=JOB_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )

    def start(self, name: str) -> None:
        self.envs[name] = self.env_of(name)
        self.logs[name] = self.data_dir.parent / f"{name}.log"
        with self.logs[name].open("w") as log:
            self.processes[name] = subprocess.Popen(
                self.argv(slipway_services()[name]["command"]),
                cwd=ROOT,
                env=self.envs[name],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )

    def output(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")

    def wait_for_output(self, name: str, text: str, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output(name):
                return
            assert self.processes[name].poll() is None, f"{name} exited:\n{self.output(name)}"
            time.sleep(0.2)
        raise AssertionError(f"{name} did not print {text!r}:\n{self.output(name)}")

    def url(self, path: str) -> str:
        return f"http://{self.envs['web']['SLIPWAY_BIND']}{path}"

    def healthcheck(self, name: str) -> subprocess.CompletedProcess[str]:
        """The service's healthcheck command, run as Docker would run it in its container."""
        test = slipway_services()[name]["healthcheck"]["test"]
        if test[0] == "CMD-SHELL":
            argv = ["sh", "-c", *self.argv(test[1:])]
        else:
            assert test[0] == "CMD", test
            argv = self.argv(test[1:])
        return subprocess.run(
            argv,
            cwd=ROOT,
            env=self.envs[name],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    def stop(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is not None:
            stop(process)

    def stop_all(self) -> None:
        stop_all([self.processes.pop(name) for name in list(self.processes)])


@pytest.fixture(scope="module")
def stack(django_db_setup, tmp_path_factory) -> Iterator[Stack]:
    require_scaled_out()
    stack = Stack(
        data_dir=tmp_path_factory.mktemp("compose") / "volume",
        variables={
            "SLIPWAY_SECRET_KEY": settings.SECRET_KEY,
            "SLIPWAY_ENCRYPTION_KEYS": ",".join(settings.ENCRYPTION_KEYS),
            "SLIPWAY_METRICS_TOKEN": METRICS_TOKEN,
            "SLIPWAY_ADMIN_PASSWORD": "compose-admin-password",
        },
    )
    stack.data_dir.mkdir()
    # What compose does: the one-shot migration first; everything else once it succeeded.
    one_shots = run_to_completion()
    for name in one_shots:
        result = stack.run_once(name)
        assert result.returncode == 0, f"{name}:\n{result.stdout}\n{result.stderr}"
    try:
        for name in slipway_services():
            if name not in one_shots:
                stack.start(name)
        wait_for_http(stack.url("/healthz"), stack.processes["web"], timeout=READY_TIMEOUT)
        for name, service in slipway_services().items():
            if celery_role(service) == "worker":
                stack.wait_for_output(name, " ready.")
        yield stack
    finally:
        stack.stop_all()
        for name in stack.logs:
            print(f"--- {name}\n{stack.output(name)[-4000:]}")


def run_to_completion() -> list[str]:
    """The services others wait for to finish (depends_on: service_completed_successfully)."""
    return sorted(
        {
            needed
            for service in slipway_services().values()
            for needed, condition in (service.get("depends_on") or {}).items()
            if condition.get("condition") == "service_completed_successfully"
        }
    )


def worker_for(queue: str) -> str:
    [name] = [
        name
        for name, service in slipway_services().items()
        if celery_role(service) == "worker" and queue in consumed_queues(service)
    ]
    return name


def test_the_file_runs_a_worker_for_every_queue_and_one_beat():
    services_ = slipway_services()
    workers = {name: s for name, s in services_.items() if celery_role(s) == "worker"}
    queues = [queue for service in workers.values() for queue in consumed_queues(service)]
    declared = {queue.name for queue in settings.CELERY_TASK_QUEUES}

    assert sorted(queues) == sorted(declared), "every queue consumed, by one kind of worker"
    assert [name for name, s in services_.items() if celery_role(s) == "beat"] == ["beat"]
    # A long deployment never delays a notification, a webhook or the reaper.
    assert worker_for("deployments") == worker_for("previews")
    assert worker_for("deployments") != worker_for("notifications")
    assert worker_for("notifications") == worker_for("housekeeping") == worker_for("webhooks")
    # Every task Slipway sends, periodic ones included, lands on a queue someone consumes.
    app.loader.import_default_modules()
    ours = [name for name in app.tasks if name.startswith(("builds.", "deployer.", "projects."))]
    scheduled = [str(entry["task"]) for entry in settings.CELERY_BEAT_SCHEDULE.values()]
    for task in {*ours, *scheduled}:
        assert task in app.tasks, f"{task} is scheduled but not registered"
        assert app.amqp.router.route({}, task)["queue"].name in queues, task
    assert run_to_completion() == ["migrate"]
    for name, service in services_.items():
        assert service.get("restart") in {"unless-stopped", "on-failure", "always"}, name
        if name not in run_to_completion():
            assert "healthcheck" in service, f"{name} has no healthcheck"


def test_the_web_process_answers_healthz_and_its_healthcheck_passes(stack):
    assert httpx.get(stack.url("/healthz"), timeout=10).status_code == 200
    result = stack.healthcheck("web")
    assert result.returncode == 0, result.stderr


def test_the_web_process_serves_metrics_from_the_database(stack, deployment_at):
    deployment_at(started=timedelta(minutes=5), seconds=42)
    deployment_at(started=timedelta(minutes=1), status=Status.QUEUED)

    response = httpx.get(
        stack.url("/metrics"), headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10
    )

    assert response.status_code == 200
    found = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    succeeded = frozenset({"kind": "deploy", "status": "succeeded"}.items())
    assert found[("slipway_deployments", succeeded)] == 1
    assert found[("slipway_deployment_duration_seconds_gsum", succeeded)] == 42
    assert found[("slipway_queue_depth", frozenset({("queue", "deployments")}))] == 1
    assert httpx.get(stack.url("/metrics"), timeout=10).status_code == 401


def wait_until_finished(deployment, stack: Stack, worker: str):
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        deployment.refresh_from_db()
        if deployment.status in (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED):
            return deployment
        assert stack.processes[worker].poll() is None, stack.output(worker)
        time.sleep(0.3)
    raise AssertionError(f"#{deployment.pk} still {deployment.status}:\n{stack.output(worker)}")


def test_the_deployments_worker_runs_deployments_and_previews(
    stack, git_repo_factory, sshd_target, project_factory, server_factory
):
    repo = git_repo_factory()
    sha = repo.commit({"index.html": "deployed by the compose file's worker\n"})
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    worker = worker_for("deployments")

    # Queued as a web request queues it: its message goes to the `deployments` queue.
    deployment = services.deployment_create(project=project, servers=[server])
    wait_until_finished(deployment, stack, worker)
    preview = services.deployment_create(project=project, servers=[server], kind=Kind.PREVIEW)
    wait_until_finished(preview, stack, worker)

    assert deployment.status == Status.SUCCEEDED, deployment.error
    assert deployment.worker.startswith("deployments@")
    assert deployment.end_revision == sha
    assert (sshd_target.deploy_path / "current" / "index.html").read_text() == (
        "deployed by the compose file's worker\n"
    )
    assert preview.status == Status.SUCCEEDED, preview.error
    assert preview.worker.startswith("deployments@")


def test_the_background_worker_consumes_webhooks_notifications_and_housekeeping(
    stack, webhook_delivery
):
    worker = worker_for("housekeeping")
    for queue in sorted(consumed_queues(slipway_services()[worker])):
        old = webhook_delivery(received=timedelta(days=settings.RETAIN_DELIVERIES_DAYS + 1))
        task_id = f"compose-{queue}-{uuid.uuid4()}"

        app.send_task(prune_old_records.name, queue=queue, task_id=task_id)

        deadline = time.monotonic() + JOB_TIMEOUT
        while WebhookDelivery.objects.filter(pk=old.pk).exists():
            assert time.monotonic() < deadline, f"{queue}: nobody ran it\n{stack.output(worker)}"
            time.sleep(0.2)
        stack.wait_for_output(worker, f"[{task_id}] succeeded")
        assert task_id not in stack.output(worker_for("deployments"))


def test_every_healthcheck_passes(stack):
    for name, service in slipway_services().items():
        if "healthcheck" in service and name in stack.processes:
            result = stack.healthcheck(name)
            assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"


def test_beat_sends_its_schedule(stack):
    # A message the broker never took: the relay (a periodic task) sends it.
    waiting = OutboxMessage.objects.create(task=prune_old_records.name, args=[])

    deadline = time.monotonic() + JOB_TIMEOUT
    while not OutboxMessage.objects.filter(pk=waiting.pk, sent_at__isnull=False).exists():
        assert time.monotonic() < deadline, stack.output("beat")
        time.sleep(0.3)
    stack.wait_for_output("beat", "Sending due task relay-outbox")

    stack.stop("beat")
    schedule = stack.argv(["/var/lib/slipway/celerybeat-schedule"])[0]
    with shelve.open(schedule, flag="r") as store:  # noqa: S301 (beat wrote it, here)
        entries = set(store["entries"])
    assert entries >= set(settings.CELERY_BEAT_SCHEDULE)
