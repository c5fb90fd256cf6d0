"""Validation of health checks and group strategies, shared by the API and the dashboard."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

from builds import outbound
from builds.engine.addresses import address_refusal, parse_address
from builds.engine.errors import InvalidInput
from builds.engine.health import HealthCheckSpec
from builds.engine.router import nginx_words, validate_include_path, validate_upstream
from builds.engine.specs import parse_batch_size
from servers.models import (
    Colour,
    HealthCheckKind,
    HealthCheckWhen,
    Promotion,
    Protocol,
    RouterKind,
    ServerGroup,
    Strategy,
)

#: A health check's settings (HealthCheck's fields but its project and servers): what the
#: API and the forms set, and what a project template copies.
HEALTH_CHECK_SETTINGS = (
    "kind",
    "when",
    "url",
    "expected_status",
    "body_contains",
    "command",
    "timeout_seconds",
    "retries",
    "interval_seconds",
)


def health_check_clean(data: Mapping[str, Any]) -> dict[str, Any]:
    """Check one health check's fields; InvalidInput names the field at fault."""
    cleaned = dict(data)
    kind = cleaned.get("kind", "")
    if kind not in HealthCheckKind.values:
        raise InvalidInput("kind", f"{kind!r} must be 'http' or 'command'")
    when = cleaned.setdefault("when", HealthCheckWhen.AFTER_SWITCH)
    if when not in HealthCheckWhen.values:
        raise InvalidInput("when", f"{when!r} must be 'before_switch' or 'after_switch'")
    url = str(cleaned.get("url") or "").strip()
    if kind == HealthCheckKind.HTTP and not url.startswith(("http://", "https://")):
        raise InvalidInput("url", "an HTTP check needs an http:// or https:// URL")
    if kind == HealthCheckKind.HTTP:
        _check_literal_address(url)
    for field, low, high in (
        ("expected_status", 100, 599),
        ("timeout_seconds", 1, 600),
        ("retries", 1, 100),
        ("interval_seconds", 0, 3600),
    ):
        if field in cleaned and cleaned[field] is not None:
            value = cleaned[field]
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise InvalidInput(field, f"must be a whole number from {low} to {high}")
    # The engine's own checks (an HTTP check after the switch, a command present...).
    spec = HealthCheckSpec(
        kind=kind,
        when=when,
        url=url,
        command=str(cleaned.get("command") or ""),
        expected_status=cleaned.get("expected_status", 200),
        timeout_seconds=cleaned.get("timeout_seconds", 5),
        retries=cleaned.get("retries", 3),
        interval_seconds=cleaned.get("interval_seconds", 5),
    )
    limit = settings.DEPLOYMENT_TIME_LIMIT
    if spec.longest_seconds > limit:
        raise InvalidInput(
            "retries",
            f"{spec.retries} attempts of up to {spec.timeout_seconds:g} s with {spec.interval_seconds:g} s "
            f"between them take up to {spec.longest_seconds:g} s, longer than a deployment may run "
            f"({limit} s, SLIPWAY_DEPLOYMENT_TIME_LIMIT)",
        )
    cleaned["url"] = url
    return cleaned


def _check_literal_address(url: str) -> None:
    """An address written in the URL, in any form, must pass the servers' outbound policy now.
    A host name (it may hold %server%) is checked before every attempt instead."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        raise InvalidInput("url", "is not a valid URL") from None
    address = parse_address(host)
    if address is None:
        return
    refusal = address_refusal(address, outbound.policy(outbound.SERVERS))
    if refusal is not None:
        raise InvalidInput("url", f"{host} is {refusal}")


def strategy_clean(data: Mapping[str, Any]) -> dict[str, Any]:
    """Check a group's strategy fields; InvalidInput names the field at fault."""
    cleaned = dict(data)
    if "strategy" in cleaned and cleaned["strategy"] not in Strategy.values:
        raise InvalidInput(
            "strategy", f"{cleaned['strategy']!r} must be one of {', '.join(Strategy.values)}"
        )
    if "promotion" in cleaned and cleaned["promotion"] not in Promotion.values:
        raise InvalidInput("promotion", "must be 'auto' or 'manual'")
    if "batch_size" in cleaned:
        parse_batch_size(str(cleaned["batch_size"]))
        cleaned["batch_size"] = str(cleaned["batch_size"]).strip()
        width = ServerGroup._meta.get_field("batch_size").max_length or 10
        if len(cleaned["batch_size"]) > width:
            # An import's or a file's number of 30 digits: the column holds 10 characters.
            raise InvalidInput("batch_size", f"is too long: at most {width} characters")
    for field in ("max_parallel", "canary_count"):
        if field in cleaned and (not isinstance(cleaned[field], int) or cleaned[field] < 1):
            raise InvalidInput(field, "must be a whole number of at least 1")
    for field in ("canary_window_seconds", "pause_seconds"):
        if field in cleaned and (not isinstance(cleaned[field], int) or cleaned[field] < 0):
            raise InvalidInput(field, "must be a whole number of seconds, 0 or more")
    if cleaned.get("router_kind", RouterKind.NGINX) not in RouterKind.values:
        raise InvalidInput("router_kind", "must be 'nginx' or 'command'")
    if cleaned.get("router_include_path"):
        cleaned["router_include_path"] = validate_include_path(
            str(cleaned["router_include_path"]).strip()
        )
    if "router_nginx_command" in cleaned:
        command = str(cleaned["router_nginx_command"]).strip()
        if "\n" in command or "\r" in command:
            raise InvalidInput("router_nginx_command", "must be one line, such as sudo -n nginx")
        nginx_words(command)
        cleaned["router_nginx_command"] = command
    port = cleaned.get("upstream_port", 80)
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidInput("upstream_port", "must be a port from 1 to 65535")
    window = cleaned.get("canary_window_seconds", 0) + cleaned.get("pause_seconds", 0)
    if window >= settings.DEPLOYMENT_TIME_LIMIT:
        raise InvalidInput(
            # The field given: a pause of 10**30 named the canary window, on the group's line.
            "canary_window_seconds" if cleaned.get("canary_window_seconds") else "pause_seconds",
            f"must fit inside the deployment time limit ({settings.DEPLOYMENT_TIME_LIMIT} s)",
        )
    return cleaned


def blue_green_check(group: ServerGroup) -> None:
    """A blue-green group as saved (strategy, router, members' colours) can deploy: its
    router is an SSH server of the project, each server has a colour, both colours have
    servers, and every address the router would send traffic to is host:port. Raises
    InvalidInput naming the field at fault; nothing for the other strategies."""
    if not group.is_blue_green:
        return
    router = group.router
    if router is None:
        raise InvalidInput("router", "a blue-green group needs a router: a server of the project")
    if router.project_id != group.project_id:
        raise InvalidInput("router", f"server {router.pk} is not part of this project")
    if router.protocol != Protocol.SSH:
        raise InvalidInput("router", f"{router.name} is not an SSH server: the switch runs there")
    if group.router_kind == RouterKind.COMMAND and not group.router_switch_command.strip():
        raise InvalidInput("router_switch_command", "a command router needs a command")
    members = list(group.members.select_related("server"))
    if any(member.server_id == router.pk for member in members):
        raise InvalidInput(
            "router",
            f"{router.name} is one of the group's servers: the router is never deployed to, "
            "so choose a server outside the group",
        )
    without = [m.server.name for m in members if m.colour not in Colour.values]
    if without:
        raise InvalidInput("colours", f"every server needs a colour: {', '.join(without)}")
    for colour in Colour.values:
        if not any(m.colour == colour for m in members):
            raise InvalidInput("colours", f"the {colour} colour has no servers")
    for member in members:
        validate_upstream(member.upstream_address(group.upstream_port), field="upstreams")
