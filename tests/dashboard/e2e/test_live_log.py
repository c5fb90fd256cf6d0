"""The live log over a connection that drops messages and then drops altogether: the page
still ends with exactly the stored log, line for line, none missing and none twice."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

from tests.dashboard.e2e.conftest import (
    create_project,
    deployment_id_of,
    sign_in,
    stored_log,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

CHATTY_BUILD = "for i in $(seq 1 40); do echo line $i; sleep 0.1; done"


def test_the_log_survives_a_lost_message_and_a_dropped_connection(
    page, slipway_app, sshd_target, git_repo_factory
):
    repo = git_repo_factory()
    repo.commit({"index.html": "hello\n"}, "Hello")
    project = create_project(
        slipway_app,
        name="Chatty",
        repository_url=repo.url,
        target=sshd_target,
        build_commands=(CHATTY_BUILD,),
    )

    # Between the page and Slipway: on the first connection, lose one batch of lines (the
    # channel layer may do that), then cut the connection a little later.
    connections: list[dict[str, int | bool]] = []

    def between(socket):
        server = socket.connect_to_server()
        state = {"batches": 0, "dropped": 0, "cut": False}
        connections.append(state)

        def from_slipway(message):
            first = len(connections) == 1
            if first and json.loads(message).get("type") == "lines":
                state["batches"] += 1
                if state["batches"] == 4:
                    state["dropped"] += 1
                    return
                if state["batches"] == 8:
                    state["cut"] = True
                    socket.close()
                    server.close()
                    return
            socket.send(message)

        server.on_message(from_slipway)
        socket.on_message(lambda message: server.send(message))

    page.route_web_socket(re.compile(r"/ws/deployments/\d+/$"), between)
    sign_in(page)
    page.goto(f"/projects/{project['slug']}/deploy/")
    page.get_by_role("button", name="Deploy", exact=True).click()
    deployment = deployment_id_of(page)

    expect(page.locator("#deployment-status")).to_have_text("Succeeded", timeout=60_000)
    assert connections[0]["dropped"] == 1 and connections[0]["cut"], connections
    assert len(connections) >= 2, "the page did not reconnect"

    stored = stored_log(page, deployment)
    assert any(line["text"] == "line 40" for line in stored)
    lines = page.locator("#log .line")
    expect(lines).to_have_count(len(stored))
    shown = lines.evaluate_all(
        "rows => rows.map(row => [Number(row.dataset.seq), row.querySelector('.txt').textContent])"
    )
    assert shown == [[line["seq"], line["text"]] for line in stored]
