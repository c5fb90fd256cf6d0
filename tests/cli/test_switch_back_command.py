"""`slipway switch-back`: a blue-green group deployed twice through the served Slipway (blue,
then green behind a real nginx router reached over SSH), then sent back to blue in one step."""

from __future__ import annotations

import http.client
import time

from tests.cli.support import slipway


def _body(port: int) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/index.html")
        return connection.getresponse().read().decode()
    except OSError as error:
        return str(error)
    finally:
        connection.close()


def _serves(port: int, body: str) -> bool:
    deadline = time.monotonic() + 5
    while _body(port) != body:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _server(api, slug, target, name) -> int:
    target.authorize(api.get(f"/projects/{slug}/").json()["public_key"])
    created = api.post(
        f"/projects/{slug}/servers/",
        json={
            "name": name,
            "hostname": target.hostname,
            "port": target.port,
            "username": target.username,
            "deploy_path": str(target.deploy_path),
            "auto_deploy": False,
        },
    )
    assert created.status_code == 201, created.text
    server_id = int(created.json()["id"])
    check = api.post(f"/projects/{slug}/servers/{server_id}/check/").json()
    trusted = api.post(
        f"/projects/{slug}/servers/{server_id}/trust/",
        json={"fingerprint": check["host_key_fingerprint"]},
    )
    assert trusted.status_code == 200, trusted.text
    return server_id


def test_switch_back_sends_the_traffic_to_blue_in_one_step(
    served, project, sshd_factory, release_server_factory, nginx_factory
):
    slug, api = str(project["slug"]), project["api"]
    blue_target, green_target, router_target = sshd_factory(), sshd_factory(), sshd_factory()
    blue_web = release_server_factory(blue_target.deploy_path)
    green_web = release_server_factory(green_target.deploy_path)
    blue = _server(api, slug, blue_target, "blue1")
    green = _server(api, slug, green_target, "green1")
    router = _server(api, slug, router_target, "lb1")
    group = api.post(
        f"/projects/{slug}/groups/",
        json={
            "name": "production",
            "strategy": "blue_green",
            "servers": [blue, green],
            "router": router,
            "colours": {str(blue): "blue", str(green): "green"},
            "upstreams": {
                str(blue): f"127.0.0.1:{blue_web.port}",
                str(green): f"127.0.0.1:{green_web.port}",
            },
        },
    )
    assert group.status_code == 201, group.text
    nginx = nginx_factory(
        router_target.root / "nginx",
        router_target.username,
        f"127.0.0.1:{blue_web.port}",
        upstream=group.json()["router_upstream_name"],
    )
    changed = api.patch(
        group.json()["url"].split("/api/v1", 1)[1],
        json={
            "router_include_path": str(nginx.include_path),
            "router_nginx_command": nginx.nginx_command,
        },
    )
    assert changed.status_code == 200, changed.text

    first = slipway(served, "deploy", slug, "--group", "production", "--wait")
    assert first.returncode == 0, first.stdout + first.stderr
    assert _serves(nginx.port, "first\n")
    project["repo"].commit({"index.html": "second\n"}, "Second")
    second = slipway(served, "deploy", slug, "--group", "production", "--wait")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Traffic switched: green is live" in second.stdout
    assert _serves(nginx.port, "second\n")

    back = slipway(served, "switch-back", slug, "--group", "production", "--wait")

    assert back.returncode == 0, back.stdout + back.stderr
    assert "the router sends the traffic back to blue (green is live now)" in back.stdout
    assert _serves(nginx.port, "first\n")
    assert api.get(group.json()["url"].split("/api/v1", 1)[1]).json()["live_colour"] == "blue"

    refused = slipway(served, "switch-back", slug, "--group", "nowhere")
    assert refused.returncode == 2 and "No group named nowhere" in refused.stderr
