"""`slipway`: the command line, a thin client of the REST API.

    slipway login --url http://127.0.0.1:8000 --token slw_...
    slipway projects
    slipway deploy shop --server web1 --revision main --wait
    slipway rollback shop --server web1 [--release NAME] [--lock "why"]
    slipway retry 42 [--wait]                 the servers deployment 42 failed on, again
    slipway promote 42 --to production [--wait]  42's build output, no fetch, no build
    slipway abort 42 --roll-back [--wait]     stop 42, roll back the servers it switched
    slipway cancel 42
    slipway approve 42                        approve a deployment held by an approvals gate
    slipway switch-back shop --group production [--wait]
    slipway lock shop --reason "bad migration, investigating" [--server web1]
    slipway unlock shop [--server web1]
    slipway status shop
    slipway drift shop --server web1 [--last]   files changed on the server since its deploy
    slipway log 42 -f
    slipway export shop > slipway.yml        the project's settings as YAML, secrets left out
    slipway import shop slipway.yml [--dry-run]
    slipway import --new "Shop 2" --repository git@host:acme/shop.git slipway.yml

The address and token come from SLIPWAY_URL and SLIPWAY_TOKEN, or from the file `slipway
login` writes (~/.config/slipway/config.json, mode 0600). Tables on a terminal, JSON with
--json. Exit codes are stable (see EXIT_*). Whatever came from the server is printed through
``terminal_safe``: colours pass, every other terminal control sequence is dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import httpx

EXIT_OK = 0
EXIT_DEPLOYMENT_FAILED = 1  # the deployment ended failed or cancelled
EXIT_USAGE = 2  # bad arguments or configuration (argparse uses 2 too)
EXIT_API_ERROR = 3  # the API refused the request (4xx other than auth)
EXIT_DRIFTED = 1  # `slipway drift`: drift found, or the check could not say (as diff(1))
EXIT_UNREACHABLE = 4  # Slipway could not be reached
EXIT_UNAUTHORIZED = 5  # missing, wrong or revoked token, or no permission
EXIT_CLOSED_PIPE = 141  # the reader of stdout went away: 128 + SIGPIPE, as the shell reports it

FINAL = ("succeeded", "failed", "cancelled")
#: Servers whose rollback uploads the earlier release again (docs/ftp.md, docs/s3.md).
IN_PLACE_PROTOCOLS = ("ftp", "ftps", "s3")
POLL_SECONDS = 0.5


class CLIError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "slipway" / "config.json"


def load_config() -> dict[str, str]:
    path = config_path()
    stored: dict[str, str] = {}
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            raise CLIError(
                f"{path} is not valid JSON: run `slipway login` again", EXIT_USAGE
            ) from None
    url = os.environ.get("SLIPWAY_URL") or stored.get("url", "")
    token = os.environ.get("SLIPWAY_TOKEN") or stored.get("token", "")
    if not url or not token:
        raise CLIError(
            "Not logged in: run `slipway login --url URL --token TOKEN` or set SLIPWAY_URL and SLIPWAY_TOKEN",
            EXIT_USAGE,
        )
    return {"url": url.rstrip("/"), "token": token}


class Client:
    def __init__(self, url: str, token: str, *, timeout: float = 30) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, "/api/v1" + path, **kwargs)
        except httpx.HTTPError as exc:
            raise CLIError(f"Cannot reach Slipway at {self.url}: {exc}", EXIT_UNREACHABLE) from None
        if response.status_code in (401, 403):
            raise CLIError(f"{response.status_code}: {_message(response)}", EXIT_UNAUTHORIZED)
        if response.status_code >= 500:
            raise CLIError(
                f"Slipway answered {response.status_code} for {method} {path}", EXIT_UNREACHABLE
            )
        if response.status_code >= 400:
            raise CLIError(f"{response.status_code}: {_message(response)}", EXIT_API_ERROR)
        return response.json() if response.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None)

    def text(self, path: str, **params: Any) -> str:
        """A non-JSON answer (CSV) as text; errors as ``request`` raises them."""
        try:
            response = self.http.request("GET", "/api/v1" + path, params=params or None)
        except httpx.HTTPError as exc:
            raise CLIError(f"Cannot reach Slipway at {self.url}: {exc}", EXIT_UNREACHABLE) from None
        if response.status_code >= 400:
            self.request("GET", path, params=params or None)  # raises the error as for JSON
        return response.text

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", path, json=body or {})

    def all(self, path: str) -> list[dict[str, Any]]:
        """Every item of a list, following pagination."""
        items: list[dict[str, Any]] = []
        page: Any = self.get(path)
        while True:
            if isinstance(page, list):
                return items + page
            items += page.get("results", [])
            following = page.get("next")
            if not following:
                return items
            page = self.request("GET", following.split("/api/v1", 1)[1])


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict):
        if "detail" in body and len(body) == 1:
            return str(body["detail"])
        return "; ".join(
            f"{field}: {' '.join(map(str, value)) if isinstance(value, list) else value}"
            for field, value in body.items()
        )
    return str(body)


# --------------------------------------------------------------------------- output

_SGR = re.compile(r"\x1b\[[0-9;:]*m")
# ECMA-48's control functions, longest forms first. Log lines, names and messages come from
# builds and people we do not trust with the terminal: a title change, a hyperlink, a cursor
# move or a clear screen could hide or fake what a deployment printed.
_CONTROLS = re.compile(
    r"""
    \x1b\[[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?       # CSI (SGR among them), or its start
    | \x1b[\]PX^_][^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)?  # OSC, DCS, SOS, PM, APC strings
    | \x1b[\x20-\x2f]*[\x30-\x7e]?                    # any other escape, or a lone ESC
    | [\x00-\x08\x0b-\x1f\x7f-\x9f]                  # C0 but \t and \n; DEL; C1 (8-bit CSI, OSC...)
    """,
    re.VERBOSE,
)


def terminal_safe(text: str, *, colour: bool = True) -> str:
    """``text`` with every terminal control sequence removed except colours and styles
    (SGR, ``ESC [ params m``), and those too unless ``colour``; ``\n`` and ``\t`` stay.
    Carriage returns and backspaces go too: they would let a line overwrite what was printed
    before it."""
    return _CONTROLS.sub(
        lambda match: match[0] if colour and _SGR.fullmatch(match[0]) else "", text
    )


COLOR_CHOICES = ("auto", "always", "never")
# Set once by main() from --color; "auto" decides per stream.
_color_choice = "auto"


def wants_colour(stream: Any, *, choice: str = "auto", environ: Any = None) -> bool:
    """Whether to keep colours in what goes to ``stream``: ``choice`` "always" or "never"
    decides; "auto" keeps them only on a terminal and only when NO_COLOR is unset or empty
    (the https://no-color.org convention)."""
    if choice != "auto":
        return choice == "always"
    if (environ if environ is not None else os.environ).get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def say(text: str, *, file: Any = None) -> None:
    """Print ``text`` (which may hold what the server sent) safely for a terminal, with its
    colours only where ``wants_colour`` says so."""
    stream = file or sys.stdout
    colour = wants_colour(stream, choice=_color_choice)
    print(terminal_safe(text, colour=colour), file=stream, flush=True)


def table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    # Cleaned before measuring, so that a control sequence cannot skew the columns.
    cells = [[str(h) for h in headers]] + [
        ["" if c is None else terminal_safe(str(c)) for c in row] for row in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def emit(data: Any, *, as_json: bool, human: str) -> None:
    # JSON escapes every control character itself (ensure_ascii), so it stays exact.
    if as_json:
        print(json.dumps(data, indent=2), flush=True)
    else:
        say(human)


def _short(sha: str | None) -> str:
    return (sha or "")[:10]


# --------------------------------------------------------------------------- commands


def cmd_login(args: argparse.Namespace) -> int:
    url = (args.url or os.environ.get("SLIPWAY_URL", "")).rstrip("/")
    token = args.token or os.environ.get("SLIPWAY_TOKEN", "")
    if not url or not token:
        raise CLIError(
            "login needs --url and --token (create a token on the dashboard's Tokens page)",
            EXIT_USAGE,
        )
    me = Client(url, token).get("/me/")
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump({"url": url, "token": token}, handle)
    say(f"Logged in to {url} as {me.get('username')}; saved to {path}")
    say(_token_summary(me.get("token")))
    return EXIT_OK


def _token_summary(token: Any) -> str:
    """What the stored token may do and until when, from /api/v1/me/."""
    if not isinstance(token, dict):
        return "This Slipway does not say the token's scope or expiry."
    scope = token.get("scope") or "unknown"
    allows = {
        "read": "it may look but change nothing",
        "deploy": "it may deploy, roll back, cancel, promote and abort",
        "admin": "it may do all your role on each project allows",
    }.get(scope, "")
    expires = token.get("expires_at")
    until = f"expires {expires}" if expires else "does not expire (until revoked)"
    return f"Token {token.get('prefix', '')}…: scope {scope} ({allows}); {until}."


def cmd_projects(args: argparse.Namespace, client: Client) -> int:
    projects = client.all("/projects/")
    rows = [
        (p["slug"], p["name"], p.get("branch", ""), p.get("repository_url", "")) for p in projects
    ]
    emit(projects, as_json=args.json, human=table(rows, ["SLUG", "NAME", "BRANCH", "REPOSITORY"]))
    return EXIT_OK


def _servers_by_name(client: Client, project: str, names: Sequence[str]) -> list[int]:
    servers = client.all(f"/projects/{project}/servers/")
    by_name = {server["name"].lower(): server["id"] for server in servers}
    missing = [name for name in names if name.lower() not in by_name]
    if missing:
        known = ", ".join(sorted(server["name"] for server in servers)) or "none"
        raise CLIError(
            f"No server named {', '.join(missing)} in {project} (servers: {known})", EXIT_USAGE
        )
    return [by_name[name.lower()] for name in names]


def _group_by_name(client: Client, project: str, name: str) -> int:
    for group in client.all(f"/projects/{project}/groups/"):
        if group["name"].lower() == name.lower():
            return int(group["id"])
    raise CLIError(f"No group named {name} in {project}", EXIT_USAGE)


def cmd_deploy(args: argparse.Namespace, client: Client) -> int:
    body: dict[str, Any] = {"full": args.full, "preview": args.preview}
    if args.revision:
        body["revision"] = args.revision
    if args.group:
        body["group"] = _group_by_name(client, args.project, args.group)
    else:
        names = args.server or [
            s["name"]
            for s in client.all(f"/projects/{args.project}/servers/")
            if s.get("enabled", True)
        ]
        body["servers"] = _servers_by_name(client, args.project, names)
    if args.freeze_reason:
        body["freeze_override_reason"] = args.freeze_reason
    if args.gates_reason:
        body["gates_override_reason"] = args.gates_reason
    deployment = client.post(f"/projects/{args.project}/deployments/", body)
    return _follow_created(args, client, deployment)


def _lock_path(client: Client, args: argparse.Namespace) -> str:
    if args.server:
        [server_id] = _servers_by_name(client, args.project, [args.server])
        return f"/projects/{args.project}/servers/{server_id}/deploy-lock/"
    return f"/projects/{args.project}/deploy-lock/"


def cmd_lock(args: argparse.Namespace, client: Client) -> int:
    answer = client.post(_lock_path(client, args), {"reason": args.reason})
    what = args.server or args.project
    lock = answer.get("lock") or {}
    emit(
        answer,
        as_json=args.json,
        human=f"Locked {what}: “{lock.get('reason', args.reason)}”. Only rollbacks run until "
        "`slipway unlock`.",
    )
    return EXIT_OK


def cmd_unlock(args: argparse.Namespace, client: Client) -> int:
    answer = client.request("DELETE", _lock_path(client, args))
    emit(answer, as_json=args.json, human=f"Unlocked {args.server or args.project}.")
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace, client: Client) -> int:
    [server_id] = _servers_by_name(client, args.project, [args.server])
    server = client.get(f"/projects/{args.project}/servers/{server_id}/")
    if args.release:
        name = quote(args.release, safe="")
        target = client.get(f"/projects/{args.project}/servers/{server_id}/releases/{name}/")
    else:
        target = server.get("rollback_target")
        if not target:
            raise CLIError(
                f"{server['name']} keeps no earlier release to roll back to", EXIT_API_ERROR
            )
    # Where the server goes, said before anything happens (on stderr with --json). FTP
    # servers and S3 buckets have no symlink: the earlier release's files are uploaded again.
    if server.get("protocol") in IN_PLACE_PROTOCOLS:
        where = f"uploads again what differs from {target['name']}"
    else:
        where = f"current → releases/{target['name']}"
    say(
        f"{server['name']}: {where} ({target['revision'][:7]})",
        file=sys.stderr if args.json else None,
    )
    body = {"release": target["name"]}
    if args.lock:
        body["lock_reason"] = args.lock
    deployment = client.post(f"/projects/{args.project}/servers/{server_id}/rollback/", body)
    return _follow_created(args, client, deployment)


def cmd_retry(args: argparse.Namespace, client: Client) -> int:
    body: dict[str, Any] = {}
    if args.freeze_reason:
        body["freeze_override_reason"] = args.freeze_reason
    deployment = client.post(f"/deployments/{args.id}/retry/", body)
    names = ", ".join(server_names(deployment).values())
    say(f"Retrying #{args.id} on {names}", file=sys.stderr if args.json else None)
    return _follow_created(args, client, deployment)


def cmd_promote(args: argparse.Namespace, client: Client) -> int:
    body: dict[str, Any] = {"to": args.to}
    if args.freeze_reason:
        body["freeze_override_reason"] = args.freeze_reason
    deployment = client.post(f"/deployments/{args.id}/promotions/", body)
    names = ", ".join(server_names(deployment).values())
    say(
        f"Promoting the build output of #{args.id} to {names} as #{deployment['id']}",
        file=sys.stderr if args.json else None,
    )
    return _follow_created(args, client, deployment)


def cmd_abort(args: argparse.Namespace, client: Client) -> int:
    if not args.roll_back:
        raise CLIError(
            "an abort rolls back every server the deployment switched: say --roll-back "
            f"(or `slipway cancel {args.id}` to stop it and keep what it switched)",
            EXIT_USAGE,
        )
    aborted = client.post(f"/deployments/{args.id}/abort/", {})
    if not args.wait:
        emit(
            aborted,
            as_json=args.json,
            human=f"Deployment #{args.id} is being aborted; the servers it switched will be "
            "rolled back when it stops",
        )
        return EXIT_OK
    if args.json:
        for _ in follow_log(client, args.id):
            pass
    else:
        print_log(client, args.id, follow=True, known=aborted)
    stopped = client.get(f"/deployments/{args.id}/")
    rollbacks = [int(pk) for pk in stopped.get("rollbacks") or []]
    if not rollbacks:
        emit(
            stopped,
            as_json=args.json,
            human=f"Deployment #{args.id} {stopped['status']}; no server to roll back",
        )
        return EXIT_OK
    return _follow_created(args, client, client.get(f"/deployments/{max(rollbacks)}/"))


def cmd_cancel(args: argparse.Namespace, client: Client) -> int:
    deployment = client.post(f"/deployments/{args.id}/cancel/", {})
    emit(
        deployment,
        as_json=args.json,
        human=f"Deployment #{args.id}: {deployment['status']}"
        + (" (it stops at its next safe point)" if deployment["status"] == "running" else ""),
    )
    return EXIT_OK


def cmd_approve(args: argparse.Namespace, client: Client) -> int:
    deployment = client.post(f"/deployments/{args.id}/approve/", {})
    approved = ", ".join(deployment.get("approved_by") or [])
    emit(
        deployment,
        as_json=args.json,
        human=f"Deployment #{args.id}: {deployment['status']}"
        + (f" (approved by {approved})" if approved else ""),
    )
    return EXIT_OK


def cmd_switch_back(args: argparse.Namespace, client: Client) -> int:
    group_id = _group_by_name(client, args.project, args.group)
    group = client.get(f"/projects/{args.project}/groups/{group_id}/")
    live = group.get("live_colour") or ""
    if group.get("strategy") != "blue_green" or not live:
        raise CLIError(
            f"{group['name']} is not a blue-green group with a live colour: nothing to switch back",
            EXIT_API_ERROR,
        )
    other = "green" if live == "blue" else "blue"
    say(
        f"{group['name']}: the router sends the traffic back to {other} ({live} is live now)",
        file=sys.stderr if args.json else None,
    )
    deployment = client.post(f"/projects/{args.project}/groups/{group_id}/switch-back/", {})
    return _follow_created(args, client, deployment)


def _follow_created(args: argparse.Namespace, client: Client, deployment: dict[str, Any]) -> int:
    if not args.wait:
        emit(
            deployment,
            as_json=args.json,
            human=f"Deployment #{deployment['id']} {deployment['status']}: {deployment.get('html_url', '')}",
        )
        return EXIT_OK
    if args.json:
        for _ in follow_log(client, int(deployment["id"])):
            pass
    else:
        say(f"Deployment #{deployment['id']} queued: {deployment.get('html_url', '')}")
        print_log(client, int(deployment["id"]), follow=True, known=deployment)
    final = client.get(f"/deployments/{deployment['id']}/")
    if args.json:
        emit(final, as_json=True, human="")
    else:
        summary = f"Deployment #{final['id']} {final['status']}"
        if final.get("error"):
            summary += f": {final['error']}"
        say(summary)
    return EXIT_OK if final["status"] == "succeeded" else EXIT_DEPLOYMENT_FAILED


def follow_log(
    client: Client, deployment_id: int, *, after: int = 0, follow: bool = True
) -> Iterator[dict[str, Any]]:
    """Every log line once, in order. With ``follow``, until the deployment is final and its
    log complete; without, until the stored log is exhausted."""
    while True:
        page = client.get(f"/deployments/{deployment_id}/log/", after=after)
        lines = [line for line in page["lines"] if line["seq"] > after]
        for line in lines:
            after = line["seq"]
            yield line
        if lines:
            continue  # there may be another page
        if not follow or page.get("complete"):
            return
        time.sleep(POLL_SECONDS)


def server_names(deployment: dict[str, Any]) -> dict[int, str]:
    """Server id → name, from a deployment's ``targets`` as the API gives them."""
    return {
        int(target["server"]): str(target.get("server_name") or target["server"])
        for target in deployment.get("targets") or []
        if target.get("server") is not None
    }


def log_text(line: dict[str, Any], names: dict[int, str]) -> str:
    """A log line as printed: ``web1 | text`` when one server printed it (two servers
    print the same steps), the bare text when the deployment as a whole did (the build)."""
    server = line.get("server")
    if server is None:
        return str(line["text"])
    name = names.get(int(server), f"server {server}")
    return "\n".join(f"{name} | {part}" for part in str(line["text"]).split("\n"))


def print_log(
    client: Client, deployment_id: int, *, follow: bool, known: dict[str, Any] | None = None
) -> None:
    """Print a deployment's log lines with their servers' names; the names come from
    ``known`` (the deployment as the API gave it) and are fetched again for a server it
    did not list yet."""
    names = server_names(known) if known else {}
    for line in follow_log(client, deployment_id, follow=follow):
        server = line.get("server")
        if server is not None and int(server) not in names:
            names.update(server_names(client.get(f"/deployments/{deployment_id}/")))
            names.setdefault(int(server), f"server {server}")  # deleted since: ask once
        say(log_text(line, names))


def cmd_log(args: argparse.Namespace, client: Client) -> int:
    lines = list(follow_log(client, args.id, follow=args.follow)) if args.json else None
    if args.json:
        emit(lines, as_json=True, human="")
        return EXIT_OK
    print_log(client, args.id, follow=args.follow)
    if args.follow:
        final = client.get(f"/deployments/{args.id}/")
        return EXIT_OK if final["status"] == "succeeded" else EXIT_DEPLOYMENT_FAILED
    return EXIT_OK


def cmd_export(args: argparse.Namespace, client: Client) -> int:
    answer = client.get(f"/projects/{quote(args.project, safe='')}/settings/")
    if args.json:
        print(json.dumps(answer["document"], indent=2), flush=True)
    else:
        # YAML to a file as it came (terminal_safe would change a value's control characters).
        sys.stdout.write(
            answer["yaml"] if not sys.stdout.isatty() else terminal_safe(answer["yaml"])
        )
        sys.stdout.flush()
    return EXIT_OK


def cmd_import(args: argparse.Namespace, client: Client) -> int:
    path = Path(args.file)
    try:
        text = sys.stdin.read() if args.file == "-" else path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"Cannot read {args.file}: {exc}", EXIT_USAGE) from None
    project = args.project
    if args.new:
        if project or not args.repository or args.dry_run:
            raise CLIError(
                "import --new NAME --repository URL FILE makes a project (no PROJECT, no "
                "--dry-run)",
                EXIT_USAGE,
            )
        body = {"name": args.new, "repository_url": args.repository}
        if args.branch:
            body["branch"] = args.branch
        project = client.post("/projects/", body)["slug"]
        say(f"Created the project {project}.", file=sys.stderr)
    elif not project:
        raise CLIError("import needs a PROJECT, or --new NAME --repository URL", EXIT_USAGE)
    try:
        answer = client.post(
            f"/projects/{quote(project, safe='')}/settings/import/",
            {"yaml": text, "dry_run": args.dry_run},
        )
    except CLIError as exc:
        if not args.new:
            raise
        # The project was made for this file only: left behind, it would take the name (the
        # next try makes NAME-2) and hold none of the settings.
        try:
            client.request("DELETE", f"/projects/{quote(project, safe='')}/")
        except CLIError as cleanup:
            raise CLIError(
                f"{exc}\nThe project {project} made for it is left without these settings "
                f"({cleanup}).",
                exc.code,
            ) from None
        raise CLIError(f"{exc}\nThe project {project} made for it was deleted.", exc.code) from None
    changed = answer.get("changed") or {}
    lines = []
    for key, change in changed.items():
        lines.append(f"{key}:")
        lines.append("  - " + json.dumps(change.get("project"), ensure_ascii=False))
        lines.append("  + " + json.dumps(change.get("file"), ensure_ascii=False))
    verb = "Would change" if args.dry_run else "Changed"
    summary = f"{verb} {', '.join(changed)}." if changed else "Nothing to change."
    emit(answer, as_json=args.json, human="\n".join([*lines, summary]))
    return EXIT_OK


def cmd_status(args: argparse.Namespace, client: Client) -> int:
    servers = client.all(f"/projects/{args.project}/servers/")
    deployments = client.get(f"/projects/{args.project}/deployments/")
    recent = (
        deployments.get("results", deployments) if isinstance(deployments, dict) else deployments
    )
    data = {"servers": servers, "deployments": recent[:10]}
    server_rows = [
        (
            s["name"],
            s.get("environment", ""),
            (s.get("live_release") or {}).get("name", "-")
            if isinstance(s.get("live_release"), dict)
            else s.get("live_release") or "-",
            _short(
                (s.get("live_release") or {}).get("revision")
                if isinstance(s.get("live_release"), dict)
                else ""
            ),
            "yes" if s.get("trusted") else "no",
        )
        for s in servers
    ]
    deployment_rows = [
        (d["id"], d["kind"], d["status"], _short(d.get("end_revision")), d.get("created_at", ""))
        for d in recent[:10]
    ]
    human = (
        table(server_rows, ["SERVER", "ENVIRONMENT", "LIVE RELEASE", "REVISION", "TRUSTED"])
        + "\n\n"
        + table(deployment_rows, ["DEPLOYMENT", "KIND", "STATUS", "REVISION", "CREATED"])
    )
    emit(data, as_json=args.json, human=human)
    return EXIT_OK


DRIFT_ACTIVE = ("queued", "running")


def cmd_drift(args: argparse.Namespace, client: Client) -> int:
    """Check a server for drift and wait for the answer (``--last``: the newest check, none
    run). Exits 0 when clean, EXIT_DRIFTED when drifted or failed."""
    [server_id] = _servers_by_name(client, args.project, [args.server])
    path = f"/projects/{args.project}/servers/{server_id}/drift/"
    if args.last:
        state = client.get(path)
        check = state["last_check"]
        if check is None:
            reason = state["reason"] or f"{args.server} has not been checked for drift yet"
            raise CLIError(reason, EXIT_API_ERROR)
    else:
        check = client.post(path)
        deadline = time.monotonic() + args.timeout
        while check["status"] in DRIFT_ACTIVE:
            if time.monotonic() > deadline:
                raise CLIError(
                    f"drift check #{check['id']} is still {check['status']} after "
                    f"{args.timeout} s; see it later with `slipway drift {args.project} "
                    f"--server {args.server} --last`",
                    EXIT_API_ERROR,
                )
            time.sleep(1)
            latest = client.get(path)["last_check"]
            if latest is not None and latest["id"] == check["id"]:
                check = latest
    emit(check, as_json=args.json, human=drift_text(args.server, check))
    return EXIT_OK if check["status"] == "clean" else EXIT_DRIFTED


def drift_text(server: str, check: dict[str, Any]) -> str:
    """A drift check for people: one line, then the files' table."""
    head = f"{server}: {check['status']} (check #{check['id']} of release {check['release']})"
    if check["status"] == "failed":
        return f"{head}: {check['error']}"
    if check["status"] == "clean":
        return f"{head}: {check['checked_count']} files compared, none changed"
    head += (
        f": {check['changed_count']} changed, {check['added_count']} added, "
        f"{check['removed_count']} removed"
    )
    rows = [(f["path"], f["change"], f["size"], (f["mtime"] or "-")[:19]) for f in check["files"]]
    more = check["files_total"] - len(rows)
    tail = f"\n... and {more} more (the API lists the first {len(rows)})" if more > 0 else ""
    return head + "\n" + table(rows, ["PATH", "CHANGE", "SIZE", "MODIFIED (UTC)"]) + tail


def _span(seconds: float | None) -> str:
    """A median duration: "42 s", "12.5 min", "3.25 h", "-" for none."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def cmd_metrics(args: argparse.Namespace, client: Client) -> int:
    """DORA's four keys (docs/metrics.md), or their CSV export with --csv."""
    params: dict[str, Any] = {"days": args.days}
    if args.environment:
        params["environment"] = args.environment
    if args.csv:
        sys.stdout.write(client.text(f"/projects/{args.project}/metrics/{args.csv}.csv", **params))
        return EXIT_OK
    report = client.get(f"/projects/{args.project}/metrics/", **params)
    rate = report.get("change_failure_rate")
    rows = [
        (
            "Deployment frequency",
            f"{report['deployments_per_week']:.1f} a week "
            f"({report['successful_deployments']} went live)",
        ),
        (
            "Lead time for changes",
            _span(report.get("lead_time_seconds"))
            + f" (median; {report['lead_time_unmeasured']} unmeasured)",
        ),
        (
            "Change failure rate",
            ("-" if rate is None else f"{rate * 100:.1f}%")
            + f" ({report['failed_changes']} of {report['deployments']})",
        ),
        (
            "Time to restore",
            _span(report.get("time_to_restore_seconds"))
            + f" (median; {report['unrestored_failures']} not restored)",
        ),
    ]
    where = terminal_safe(report["environment"]) or "every server"
    human = f"{where}, last {report['days']} days\n" + table(rows, ["METRIC", "VALUE"])
    emit(report, as_json=args.json, human=human)
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="slipway", description="Deploy with Slipway from the command line."
    )
    root.add_argument("--json", action="store_true", help="print JSON instead of tables")
    root.add_argument(
        "--color",
        choices=COLOR_CHOICES,
        default="auto",
        help="colours in log lines: auto (on a terminal, unless NO_COLOR is set), always, never",
    )
    commands = root.add_subparsers(dest="command", required=True)

    login = commands.add_parser("login", help="save the address and token")
    login.add_argument("--url")
    login.add_argument("--token")

    projects = commands.add_parser("projects", help="list projects")

    deploy = commands.add_parser("deploy", help="deploy a project")
    deploy.add_argument("project")
    deploy.add_argument(
        "--server", action="append", help="a server by name (repeat; default: every enabled server)"
    )
    deploy.add_argument("--group", help="a group by name")
    deploy.add_argument(
        "--revision", help="a branch, tag or SHA (default: the server's branch head)"
    )
    deploy.add_argument(
        "--full", action="store_true", help="upload every file, not only the changes"
    )
    deploy.add_argument(
        "--preview", action="store_true", help="compute the changes without deploying"
    )
    deploy.add_argument(
        "--wait", action="store_true", help="stream the log and exit non-zero on failure"
    )
    deploy.add_argument(
        "--freeze-reason",
        help="during a freeze window: why this cannot wait (project admins only; audited)",
    )
    deploy.add_argument(
        "--gates-reason",
        help="deploy past the environment's gates that did not pass: why (admins; audited)",
    )

    rollback = commands.add_parser("rollback", help="switch a server back to an earlier release")
    rollback.add_argument("project")
    rollback.add_argument("--server", required=True)
    rollback.add_argument("--release", help="a kept release (default: the one before the live one)")
    rollback.add_argument("--wait", action="store_true")
    rollback.add_argument(
        "--lock", metavar="REASON", help="also lock the server, so nothing but rollbacks reach it"
    )

    retry = commands.add_parser(
        "retry", help="deploy a finished deployment's revision again to the servers it failed on"
    )
    retry.add_argument("id", type=int)
    retry.add_argument(
        "--wait", action="store_true", help="stream the log and exit non-zero on failure"
    )
    retry.add_argument(
        "--freeze-reason",
        help="during a freeze window: why this cannot wait (project admins only; audited)",
    )
    promote = commands.add_parser(
        "promote",
        help="send a deployment's kept build output to other servers: no fetch, no build",
    )
    promote.add_argument("id", type=int, help="the deployment whose build output goes")
    promote.add_argument(
        "--to", required=True, help="an environment, or server names separated by commas"
    )
    promote.add_argument(
        "--wait", action="store_true", help="stream the log and exit non-zero on failure"
    )
    promote.add_argument(
        "--freeze-reason",
        help="during a freeze window: why this cannot wait (project admins only; audited)",
    )
    abort = commands.add_parser(
        "abort", help="stop a running deployment and roll back the servers it switched"
    )
    abort.add_argument("id", type=int)
    abort.add_argument(
        "--roll-back",
        action="store_true",
        help="required: roll back every server it switched (what an abort does)",
    )
    abort.add_argument(
        "--wait",
        action="store_true",
        help="stream its log, then the rollback's, and exit non-zero unless the rollback succeeds",
    )
    cancel = commands.add_parser(
        "cancel", help="stop a deployment at its next safe point, keeping what it switched"
    )
    cancel.add_argument("id", type=int)

    approve = commands.add_parser(
        "approve", help="approve a deployment waiting for an approvals gate (docs/gates.md)"
    )
    approve.add_argument("id", type=int)

    switch_back = commands.add_parser(
        "switch-back",
        help="blue-green: send a group's traffic back to the other colour (no redeploy)",
    )
    switch_back.add_argument("project")
    switch_back.add_argument("--group", required=True, help="the blue-green group, by name")
    switch_back.add_argument("--wait", action="store_true")

    lock = commands.add_parser(
        "lock", help="stop every deployment but rollbacks, with a reason everyone sees"
    )
    lock.add_argument("project")
    lock.add_argument("--reason", required=True)
    lock.add_argument("--server", help="lock only this server (by name)")
    unlock = commands.add_parser("unlock", help="lift a lock")
    unlock.add_argument("project")
    unlock.add_argument("--server", help="unlock only this server (by name)")

    status = commands.add_parser("status", help="servers and recent deployments of a project")
    status.add_argument("project")

    drift = commands.add_parser(
        "drift",
        help="compare a server's live release with what Slipway deployed (exit 1 on drift)",
    )
    drift.add_argument("project")
    drift.add_argument("--server", required=True, help="the server, by name")
    drift.add_argument(
        "--last", action="store_true", help="show the newest check instead of running one"
    )
    drift.add_argument(
        "--timeout", type=int, default=1800, help="seconds to wait for the check (1800)"
    )

    log = commands.add_parser("log", help="a deployment's log")
    log.add_argument("id", type=int)
    log.add_argument("-f", "--follow", action="store_true", help="follow until the deployment ends")

    metrics = commands.add_parser("metrics", help="DORA's four keys of a project")
    metrics.add_argument("project")
    metrics.add_argument("--environment", default="", help="servers of this environment only")
    metrics.add_argument("--days", type=int, default=30, help="the window in days (default 30)")
    metrics.add_argument(
        "--csv", choices=("deployments", "days"), help="print the CSV export instead"
    )
    export = commands.add_parser(
        "export", help="print a project's settings as YAML (secrets left out)"
    )
    export.add_argument("project")
    import_ = commands.add_parser("import", help="apply settings from a YAML file (or -)")
    import_.add_argument("project", nargs="?", help="the project (or --new)")
    import_.add_argument("file", help="a file `slipway export` wrote, or - for stdin")
    import_.add_argument("--new", metavar="NAME", help="make a new project with these settings")
    import_.add_argument("--repository", metavar="URL", help="with --new: its repository")
    import_.add_argument("--branch", help="with --new: its branch (default main)")
    import_.add_argument(
        "--dry-run", action="store_true", help="only show what would change; save nothing"
    )
    for sub in (
        projects,
        deploy,
        rollback,
        retry,
        promote,
        abort,
        cancel,
        approve,
        switch_back,
        lock,
        unlock,
        status,
        drift,
        log,
        metrics,
        export,
        import_,
    ):
        sub.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
        sub.add_argument(
            "--color", choices=COLOR_CHOICES, default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return root


def main(argv: Sequence[str] | None = None) -> NoReturn:
    global _color_choice
    args = parser().parse_args(argv)
    _color_choice = args.color
    try:
        if args.command == "login":
            code = cmd_login(args)
        else:
            config = load_config()
            client = Client(config["url"], config["token"])
            handler = {
                "projects": cmd_projects,
                "deploy": cmd_deploy,
                "rollback": cmd_rollback,
                "retry": cmd_retry,
                "promote": cmd_promote,
                "abort": cmd_abort,
                "cancel": cmd_cancel,
                "approve": cmd_approve,
                "switch-back": cmd_switch_back,
                "lock": cmd_lock,
                "unlock": cmd_unlock,
                "status": cmd_status,
                "drift": cmd_drift,
                "log": cmd_log,
                "metrics": cmd_metrics,
                "export": cmd_export,
                "import": cmd_import,
            }[args.command]
            code = handler(args, client)
    except CLIError as error:
        say(f"slipway: {error}", file=sys.stderr)
        code = error.code
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        code = _closed_pipe()
    sys.exit(code)


def _closed_pipe() -> int:
    """The reader of stdout went away (``| head``): say nothing more. Python would flush
    stdout again at exit and print a second traceback there, so stdout is pointed at
    /dev/null first (as the Python documentation on SIGPIPE advises)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_CLOSED_PIPE


if __name__ == "__main__":
    main()
