"""The faults `make faults` injects, each at a random moment of a real deployment.

An injector causes its fault, holds it for a while when it is a state (a link down, a full
disk), and undoes it as an operator or a supervisor would: killed processes are restarted by
the stack's supervisor, sshd is started again, the link brought up, the disk freed. It returns
a line for the log saying what it did.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faults.stack import Stack
from tests.support.netns import NetnsHost

#: Seconds a post-switch command may run; the "hang" commit's sleeps well past it.
COMMAND_TIMEOUT = 5
HANG_SECONDS = 60
#: The longest a full disk is kept full when the deployment has not ended before.
DISK_FULL_AT_MOST = 20.0


@dataclass
class Context:
    """What an injector may touch: the stack, the hosts, the running deployment."""

    stack: Stack
    hosts: list[NetnsHost]
    rng: random.Random
    #: () -> (status, worker hostname, Celery task id) of the deployment under fault.
    deployment_state: Callable[[], tuple[str, str, str]]
    #: The Celery app (deployer.celery.app), to ask a worker which pool child runs a task.
    celery_app: Any

    def deployment_final(self) -> bool:
        return self.deployment_state()[0] in ("succeeded", "failed", "cancelled")


def _host(ctx: Context) -> NetnsHost:
    return ctx.rng.choice(ctx.hosts)


def _worker_name(ctx: Context) -> str:
    """The supervised worker running the deployment, else one at random."""
    _, hostname, _ = ctx.deployment_state()
    name = hostname.split("@", 1)[0]
    if name in ctx.stack.processes:
        return name
    return ctx.rng.choice(ctx.stack.workers()).name


def worker_kill(ctx: Context) -> str:
    name = _worker_name(ctx)
    ctx.stack.kill(name)
    return f"SIGKILL to {name} and its pool children"


def pool_child_kill(ctx: Context) -> str:
    name = _worker_name(ctx)
    worker = ctx.stack.processes[name]
    _, hostname, task_id = ctx.deployment_state()
    pid = _task_pid(ctx.celery_app, hostname, task_id) if task_id else None
    children = _children(worker.pid) if worker.pid else []
    if pid is None or pid not in children:
        if not children:
            return f"{name} had no pool child to kill"
        pid = ctx.rng.choice(children)
        which = "a pool child"
    else:
        which = "the pool child running the deployment"
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return f"SIGKILL to {which} of {name} (pid {pid})"


def _task_pid(app: Any, hostname: str, task_id: str) -> int | None:
    # Any failure (the broker is away, the worker does not answer) means "do not know".
    with contextlib.suppress(Exception):
        active = app.control.inspect(destination=[hostname], timeout=1.0).active() or {}
        for task in active.get(hostname, []):
            if task.get("id") == task_id:
                return int(task["worker_pid"])
    return None


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def sshd_kill(ctx: Context) -> str:
    host = _host(ctx)
    host.stop_sshd()
    down = ctx.rng.uniform(2, 8)
    time.sleep(down)
    host.start_sshd()
    return f"sshd of {host.address} killed with its sessions, started again {down:.1f} s later"


def link_cut(ctx: Context) -> str:
    host = _host(ctx)
    host.cut_link()
    down = ctx.rng.uniform(2, 12)
    try:
        time.sleep(down)
    finally:
        host.restore_link()
    return f"link of {host.address} down for {down:.1f} s"


def link_slow(ctx: Context) -> str:
    host = _host(ctx)
    host.slow_link()
    slow = ctx.rng.uniform(5, 15)
    try:
        time.sleep(slow)
    finally:
        host.unslow_link()
    return f"link of {host.address} at 64 kbit/s for {slow:.1f} s"


def disk_full(ctx: Context) -> str:
    host = _host(ctx)
    taken = host.fill_disk()
    started = time.monotonic()
    try:
        while time.monotonic() - started < DISK_FULL_AT_MOST and not ctx.deployment_final():
            time.sleep(0.5)
    finally:
        host.free_disk()
    return (
        f"disk of {host.address} filled ({taken // 1024} KiB), "
        f"freed {time.monotonic() - started:.1f} s later"
    )


def redis_restart(ctx: Context) -> str:
    ctx.stack.hold_down("redis")
    down = ctx.rng.uniform(1, 3)
    time.sleep(down)
    ctx.stack.release("redis")
    return f"Redis stopped (no persistence: its queues are lost), started {down:.1f} s later"


def pg_terminate(ctx: Context) -> str:
    killed = ctx.stack.terminate_database_connections()
    return f"pg_terminate_backend on {killed} connections"


def command_hang(ctx: Context) -> str:
    return (
        f"the commit's post-switch command sleeps {HANG_SECONDS} s "
        f"(its timeout is {COMMAND_TIMEOUT} s)"
    )


INJECTORS: dict[str, Callable[[Context], str]] = {
    "worker SIGKILL": worker_kill,
    "pool child SIGKILL": pool_child_kill,
    "sshd killed": sshd_kill,
    "link cut": link_cut,
    "link slowed": link_slow,
    "disk full": disk_full,
    "Redis restarted": redis_restart,
    "PostgreSQL connections killed": pg_terminate,
    "command hangs": command_hang,
}
#: Faults that come with the deployment itself rather than at a moment of it.
IN_THE_COMMIT = frozenset({"command hangs"})
