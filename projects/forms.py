"""The dashboard's forms for projects, their settings, members, API tokens and accounts.

Forms only parse (types, lengths, one value per line...). The rules live in the services
(projects.services), which the API calls too; their errors are put beside the field they
name by projects.dashboard.add_service_error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django import forms
from django.contrib.auth.forms import AdminUserCreationForm
from django.db import models

from projects.models import (
    URL_KINDS,
    WEEKDAY_NAMES,
    BuildCommand,
    Command,
    CommandRunOn,
    CommandStage,
    CommitDeploys,
    ConfigFile,
    EnvironmentVariable,
    ExcludedFile,
    FreezeKind,
    FreezeWindow,
    Integration,
    IntegrationKind,
    Notification,
    NotificationEvent,
    NotificationKind,
    OnDrift,
    Project,
    Role,
    SiteSettings,
    TokenScope,
)
from projects.services import (
    MAX_DRIFT_CHECK_HOURS,
    MAX_TIMEOUT_SECONDS,
    MAX_TOKEN_DAYS,
    TemplateSource,
)
from servers.models import Colour, Promotion, RouterKind, Server, ServerGroup, Strategy

MONOSPACE = {"class": "mono", "spellcheck": "false", "autocapitalize": "off"}


class LinesField(forms.CharField):
    """A list of strings, typed one per line; blank lines are dropped."""

    widget = forms.Textarea(attrs={"rows": 3, **MONOSPACE})

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return "\n".join(str(item) for item in value)
        return value

    def to_python(self, value: Any) -> list[str]:  # type: ignore[override]
        text = super().to_python(value) or ""
        return [line.strip() for line in text.splitlines() if line.strip()]


class ProjectForm(forms.Form):
    name = forms.CharField(max_length=100)
    repository_url = forms.CharField(
        label="Repository URL",
        max_length=500,
        widget=forms.TextInput(attrs=MONOSPACE),
        help_text="git@host:owner/repo.git, ssh://…, https://… or git://…",
    )
    branch = forms.CharField(
        max_length=255,
        initial="main",
        widget=forms.TextInput(attrs=MONOSPACE),
        help_text="Deployed unless a server or group names another branch.",
    )
    subdirectory = forms.CharField(
        max_length=255,
        required=False,
        widget=forms.TextInput(attrs=MONOSPACE),
        help_text="Deploy only this folder of the repository; blank for all of it.",
    )
    shared_paths = LinesField(
        help_text="One per line, linked from shared/ into every release "
        "(storage/, .env). End folders with /."
    )
    cache_paths = LinesField(
        help_text="One per line, kept between builds on the worker (node_modules, vendor)."
    )
    generated_paths = LinesField(
        help_text="One glob per line, of what your deploy commands write on the server "
        "(staticfiles/, **/__pycache__/): never uploaded, restored nor deleted."
    )
    build_network = forms.BooleanField(
        label="Build commands may use the network",
        required=False,
        initial=True,
        help_text="Package registries and the internet, never this worker's own services. "
        "Untick to run builds with no network at all.",
    )
    export_ignore = forms.BooleanField(
        label="Leave out export-ignore paths",
        required=False,
        initial=True,
        help_text="Paths the repository's .gitattributes marks export-ignore are not deployed, "
        "as with git archive. Untick to deploy them too.",
    )
    submodules = forms.BooleanField(
        label="Check out submodules",
        required=False,
        initial=True,
        help_text="Fetched with the project's key, from addresses the repository may use. "
        "Untick to leave submodule folders empty.",
    )
    on_drift = forms.ChoiceField(
        label="When a deployment finds drift",
        choices=OnDrift.choices,
        required=False,
        initial=OnDrift.RESTORE,
        help_text="Files changed on a server since the last deployment (by hand, or by the "
        "application): restore the build's files, or refuse to deploy and list them.",
    )
    drift_check_hours = forms.IntegerField(
        label="Check servers for drift every (hours)",
        required=False,
        min_value=0,
        max_value=MAX_DRIFT_CHECK_HOURS,
        initial=0,
        help_text="0: only when asked (server page, API, CLI). A drift not seen before "
        "notifies the notifications that list the drift event.",
    )
    settings_from_repository = forms.BooleanField(
        label="Take settings from .slipway.yml",
        required=False,
        initial=False,
        help_text="Each deployment reads .slipway.yml at its revision: the build commands, "
        "SSH commands, excluded files, shared paths, health checks and group strategies it "
        "holds replace these for that deployment (docs/settings-as-code.md).",
    )
    artefacts_keep = forms.IntegerField(
        label="Build outputs kept for promotion",
        required=False,
        min_value=0,
        max_value=1000,
        initial=10,
        help_text="The newest this many deployments' build outputs can be promoted to other "
        "servers (docs/promote.md); 0: no limit by count.",
    )
    artefacts_keep_days = forms.IntegerField(
        label="Days a build output is kept",
        required=False,
        min_value=0,
        max_value=3650,
        initial=30,
        help_text="Older build outputs are removed by retention; 0: no limit by age.",
    )
    commit_deploys = forms.ChoiceField(
        label="[deploy: name] in a commit message",
        choices=CommitDeploys.choices,
        required=False,
        initial=CommitDeploys.ANYONE,
        help_text="A pusher who is a member (matched by the email the Git host reports) may "
        "add only servers their deploy rights cover; this decides whether anyone else's "
        "push may add any (docs/webhooks.md#commit-message-commands).",
    )
    repository_token = forms.CharField(
        label="Repository access token",
        max_length=2000,
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="For https repositories that need one. Stored encrypted and never shown.",
    )
    remove_repository_token = forms.BooleanField(
        label="Remove the stored access token", required=False
    )

    template = forms.ChoiceField(
        label="Start from a template",
        required=False,
        widget=forms.RadioSelect,
        help_text="Its settings are copied into the new project, to change as you like; "
        "the project is not linked to the template afterwards.",
    )

    def clean(self) -> dict[str, Any] | None:
        cleaned = super().clean()
        # Left empty (or not sent, as by a form made before these fields): unchanged.
        for name in ("artefacts_keep", "artefacts_keep_days"):
            if cleaned is not None and cleaned.get(name) is None:
                cleaned.pop(name, None)
        return cleaned

    CREATE_FIELDS = (
        "name",
        "repository_url",
        "branch",
        "subdirectory",
        "repository_token",
        "template",
    )

    def __init__(
        self,
        *args: Any,
        project: Project | None = None,
        templates: Sequence[TemplateSource] = (),
        **kwargs: Any,
    ) -> None:
        self.project = project
        if project is not None and "initial" not in kwargs:
            kwargs["initial"] = {
                "name": project.name,
                "repository_url": project.repository_url,
                "branch": project.branch,
                "subdirectory": project.subdirectory,
                "shared_paths": project.shared_paths,
                "cache_paths": project.cache_paths,
                "generated_paths": project.generated_paths,
                "build_network": project.build_network,
                "export_ignore": project.export_ignore,
                "submodules": project.submodules,
                "on_drift": project.on_drift,
                "drift_check_hours": project.drift_check_hours,
                "settings_from_repository": project.settings_from_repository,
                "artefacts_keep": project.artefacts_keep,
                "artefacts_keep_days": project.artefacts_keep_days,
                "commit_deploys": project.commit_deploys,
            }
        super().__init__(*args, **kwargs)
        if project is None:
            for name in list(self.fields):
                if name not in self.CREATE_FIELDS:
                    del self.fields[name]
            template = self.fields["template"]
            assert isinstance(template, forms.ChoiceField)
            template.choices = [("", "None: start with empty settings")] + [
                (
                    source.reference,
                    # Saved templates say so: a saved name cannot pass for a built-in one.
                    f"{source.name} ({'built in' if source.builtin else 'saved'}): "
                    f"{source.description}".rstrip(": "),
                )
                for source in templates
            ]
            template.initial = ""
        else:
            del self.fields["template"]
            if project.repository_token:
                self.fields[
                    "repository_token"
                ].help_text = (
                    "A token is stored (encrypted, never shown). Type a new one to replace it."
                )
            else:
                del self.fields["remove_repository_token"]

    def service_data(self) -> dict[str, Any]:
        data = dict(self.cleaned_data)
        remove = data.pop("remove_repository_token", False)
        if remove:
            data["repository_token"] = ""
        elif not data.get("repository_token"):
            # Blank keeps the stored token: it is never shown, so it cannot be "edited".
            data.pop("repository_token", None)
        if self.project is None and not data.get("subdirectory"):
            data.pop("subdirectory", None)
        if not data.get("template"):
            data.pop("template", None)
        # Left out (a form from before these settings): what is stored stays.
        if not data.get("on_drift"):
            data.pop("on_drift", None)
        if data.get("drift_check_hours") is None:
            data.pop("drift_check_hours", None)
        if not data.get("commit_deploys"):
            # A form from before the setting (or without it) keeps what is stored.
            data.pop("commit_deploys", None)
        return data


class TemplateSaveForm(forms.Form):
    """Save a project's settings as a template (projects.services.project_template_save).
    Shown beside the project's own form, so the views give it the prefix "template"."""

    name = forms.CharField(max_length=100, help_text="Shown in the new project page's list.")
    description = forms.CharField(
        max_length=255, required=False, help_text="What it is for, in a line."
    )


class SettingsImportForm(forms.Form):
    """Apply settings exported as YAML (projects.settings_code.settings_import). Shown on
    the settings page, so the views give it the prefix "import"."""

    yaml = forms.CharField(
        label="Settings (YAML)",
        max_length=256 * 1024,
        strip=False,
        widget=forms.Textarea(attrs={**MONOSPACE, "rows": 12}),
        help_text="As Export writes them. Keys left out stay as they are; a secret variable "
        "without its value keeps the stored one.",
    )
    dry_run = forms.BooleanField(label="Only show what would change", required=False, initial=True)


# --------------------------------------------------------------------------- settings


class SettingForm(forms.Form):
    """A form for one kind of project setting; ``service_data()`` goes to the services."""

    model: type[models.Model]

    def __init__(
        self, *args: Any, project: Project, instance: models.Model | None = None, **kwargs: Any
    ) -> None:
        self.project = project
        self.instance = instance
        if instance is not None and "initial" not in kwargs:
            kwargs["initial"] = self.initial_for(instance)
        super().__init__(*args, **kwargs)
        servers = self.fields.get("servers")
        if isinstance(servers, forms.ModelMultipleChoiceField):
            servers.queryset = Server.objects.filter(project=project)

    def initial_for(self, instance: Any) -> dict[str, Any]:
        initial = {name: getattr(instance, name, None) for name in self.base_fields}
        if "servers" in initial and not isinstance(self.base_fields["servers"], forms.BooleanField):
            initial["servers"] = list(instance.servers.values_list("pk", flat=True))
        return initial

    def service_data(self) -> dict[str, Any]:
        data = dict(self.cleaned_data)
        if "servers" in data and not isinstance(data["servers"], bool):
            data["servers"] = list(data["servers"])
        return data


def shown_for(control: str, *values: str, **attrs: Any) -> dict[str, Any]:
    """Widget attributes that show a field only while the form's ``control`` field has one of
    ``values`` (static/js/settings.js; without JavaScript every field stays shown)."""
    return {"data-shown-with": control, "data-shown-for": " ".join(values), **attrs}


def servers_field(help_text: str = "None ticked: every server of the project.") -> Any:
    return forms.ModelMultipleChoiceField(
        queryset=Server.objects.none(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=help_text,
    )


def _timeout_field() -> forms.IntegerField:
    return forms.IntegerField(
        label="Timeout (seconds)",
        required=False,
        min_value=1,
        max_value=MAX_TIMEOUT_SECONDS,
        help_text="Blank: no limit of its own.",
    )


class CommandForm(SettingForm):
    model = Command

    command = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, **MONOSPACE}), strip=False)
    description = forms.CharField(max_length=255, required=False)
    stage = forms.ChoiceField(label="When", choices=CommandStage.choices)
    run_on = forms.ChoiceField(label="Run on", choices=CommandRunOn.choices)
    run_once = forms.BooleanField(
        label="Run once: on one server of each deployment only",
        required=False,
        help_text="For database migrations: the first server in the deployment's order that "
        "reaches it runs it; the others skip it (the log says where it ran).",
    )
    halt_on_error = forms.BooleanField(
        label="Stop the deployment when it fails", required=False, initial=True
    )
    timeout_seconds = _timeout_field()
    servers = servers_field()


class BuildCommandForm(SettingForm):
    model = BuildCommand

    command = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, **MONOSPACE}), strip=False)
    description = forms.CharField(max_length=255, required=False)
    halt_on_error = forms.BooleanField(
        label="Stop the deployment when it fails", required=False, initial=True
    )
    timeout_seconds = _timeout_field()
    watch_globs = LinesField(
        label="Only when these files change",
        help_text="Globs, one per line (package-lock.json, assets/**). Blank: always run.",
    )


class ConfigFileForm(SettingForm):
    model = ConfigFile

    path = forms.CharField(
        max_length=500,
        widget=forms.TextInput(attrs=MONOSPACE),
        help_text="Relative to the release, e.g. config/database.yml or .env",
    )
    description = forms.CharField(max_length=255, required=False)
    body = forms.CharField(
        label="Contents",
        required=False,
        strip=False,
        max_length=1_000_000,
        widget=forms.Textarea(attrs={"rows": 14, **MONOSPACE}),
    )
    mode = forms.CharField(
        max_length=4,
        required=False,
        widget=forms.TextInput(attrs=MONOSPACE),
        help_text="Octal, e.g. 640. Blank: 600 (only the login user reads it), 640 with a group.",
    )
    group = forms.CharField(
        max_length=32,
        required=False,
        widget=forms.TextInput(attrs=MONOSPACE),
        help_text="A group given the file (e.g. www-data, for the web server to read it).",
    )
    servers = servers_field()


class ExcludedFileForm(SettingForm):
    model = ExcludedFile

    pattern = forms.CharField(
        max_length=500,
        widget=forms.TextInput(attrs=MONOSPACE),
        help_text="Like .gitignore: *, **, a trailing / for folders, ! to include again.",
    )


class EnvironmentVariableForm(SettingForm):
    model = EnvironmentVariable

    name = forms.CharField(max_length=255, widget=forms.TextInput(attrs=MONOSPACE))
    value = forms.CharField(
        required=False,
        strip=False,
        max_length=100_000,
        widget=forms.TextInput(attrs={**MONOSPACE, "autocomplete": "off"}),
    )
    secret = forms.BooleanField(
        required=False,
        help_text="Write-only: never shown again, and masked in every log line.",
    )
    build = forms.BooleanField(label="Available to build commands", required=False, initial=True)
    servers = forms.BooleanField(
        label="Available to commands on the servers", required=False, initial=True
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        instance = self.instance
        was_secret = isinstance(instance, EnvironmentVariable) and instance.secret
        if was_secret or self.data.get("secret"):
            # A secret value is never sent back to the browser, not even after an error.
            self.fields["value"].widget = forms.PasswordInput(
                render_value=False, attrs={**MONOSPACE, "autocomplete": "new-password"}
            )
        if was_secret:
            self.fields["value"].help_text = "Stored and hidden. Blank keeps the current value."

    def initial_for(self, instance: Any) -> dict[str, Any]:
        initial = super().initial_for(instance)
        if instance.secret:
            initial["value"] = ""
        return initial

    def clean(self) -> dict[str, Any] | None:
        cleaned = super().clean() or {}
        instance = self.instance
        if (
            isinstance(instance, EnvironmentVariable)
            and instance.secret
            and not cleaned.get("secret")
            and not cleaned.get("value")
        ):
            self.add_error("value", "Give a new value to make a secret variable visible again.")
        return cleaned

    def service_data(self) -> dict[str, Any]:
        data = super().service_data()
        instance = self.instance
        if isinstance(instance, EnvironmentVariable) and instance.secret and not data["value"]:
            del data["value"]
        return data


class GroupForm(SettingForm):
    model = ServerGroup

    name = forms.CharField(max_length=100)
    servers = servers_field("Deployed in this order (the servers' order in the project).")
    branch = forms.CharField(
        max_length=255,
        required=False,
        widget=forms.TextInput(attrs=MONOSPACE),
        help_text="Blank: the project's branch.",
    )
    environment = forms.CharField(max_length=50, required=False)
    auto_deploy = forms.BooleanField(
        label="Deploy automatically on push", required=False, initial=True
    )
    strategy = forms.ChoiceField(
        required=False,
        choices=Strategy.choices,
        initial=Strategy.PARALLEL,
        help_text="How the servers take a new release; see docs/strategies.md.",
    )
    max_parallel = forms.IntegerField(
        label="Servers at a time",
        required=False,
        initial=5,
        widget=forms.NumberInput(
            attrs=shown_for(
                "strategy", Strategy.PARALLEL, Strategy.PREPARE_THEN_SWITCH, Strategy.CANARY
            )
        ),
        help_text="At most this many servers are worked on at once (after the canaries too).",
    )
    batch_size = forms.CharField(
        label="Batch size",
        required=False,
        max_length=10,
        initial="1",
        widget=forms.TextInput(attrs=shown_for("strategy", Strategy.ROLLING, **MONOSPACE)),
        help_text="Servers per batch: a number, or a percentage such as 25%.",
    )
    pause_seconds = forms.IntegerField(
        label="Pause between batches (seconds)",
        required=False,
        initial=0,
        widget=forms.NumberInput(attrs=shown_for("strategy", Strategy.ROLLING)),
    )
    canary_count = forms.IntegerField(
        label="Canaries",
        required=False,
        initial=1,
        widget=forms.NumberInput(attrs=shown_for("strategy", Strategy.CANARY)),
        help_text="The first servers in the group's order get the release first.",
    )
    canary_window_seconds = forms.IntegerField(
        label="Watch the canaries for (seconds)",
        required=False,
        initial=0,
        widget=forms.NumberInput(attrs=shown_for("strategy", Strategy.CANARY)),
        help_text="The after-switch health checks are repeated meanwhile; a failure rolls "
        "the canaries back.",
    )
    promotion = forms.ChoiceField(
        label="Then the rest follow",
        required=False,
        choices=Promotion.choices,
        initial=Promotion.AUTO,
        widget=forms.Select(attrs=shown_for("strategy", Strategy.CANARY)),
    )

    blue_servers = forms.ModelMultipleChoiceField(
        label="Blue servers",
        queryset=Server.objects.none(),
        required=False,
        widget=forms.CheckboxSelectMultiple(attrs=shown_for("strategy", Strategy.BLUE_GREEN)),
        help_text="Blue-green: the group's servers of each colour. A deployment goes to the "
        "colour not live, then the router sends the traffic to it (docs/blue-green.md).",
    )
    green_servers = forms.ModelMultipleChoiceField(
        label="Green servers",
        queryset=Server.objects.none(),
        required=False,
        widget=forms.CheckboxSelectMultiple(attrs=shown_for("strategy", Strategy.BLUE_GREEN)),
    )
    upstream_lines = LinesField(
        label="Addresses behind the router",
        widget=forms.Textarea(
            attrs=shown_for("strategy", Strategy.BLUE_GREEN, rows=3, **MONOSPACE)
        ),
        help_text="One line per server whose address differs: its name, then host:port "
        "(web1 10.0.0.5:8080). Others: their host name on the port below.",
    )
    upstream_port = forms.IntegerField(
        label="Application port",
        required=False,
        initial=80,
        widget=forms.NumberInput(attrs=shown_for("strategy", Strategy.BLUE_GREEN)),
    )
    router = forms.ModelChoiceField(
        queryset=Server.objects.none(),
        required=False,
        widget=forms.Select(attrs=shown_for("strategy", Strategy.BLUE_GREEN)),
        help_text="The server (over SSH) that switches the traffic: nginx in front of the "
        "group, or any proxy a command drives.",
    )
    router_kind = forms.ChoiceField(
        label="Switch with",
        required=False,
        choices=RouterKind.choices,
        initial=RouterKind.NGINX,
        widget=forms.Select(attrs=shown_for("strategy", Strategy.BLUE_GREEN)),
    )
    router_include_path = forms.CharField(
        label="nginx include file",
        max_length=500,
        required=False,
        widget=forms.TextInput(attrs=shown_for("strategy", Strategy.BLUE_GREEN, **MONOSPACE)),
        help_text="Rewritten at each switch (temporary file, then renamed), tested with "
        "nginx -t, then nginx reloads. Blank: /etc/nginx/conf.d/slipway-group-<id>.conf.",
    )
    router_nginx_command = forms.CharField(
        label="nginx runs as",
        max_length=500,
        required=False,
        initial="nginx",
        widget=forms.TextInput(attrs=shown_for("strategy", Strategy.BLUE_GREEN, **MONOSPACE)),
        help_text="How the router's login user runs nginx: nginx, or sudo -n nginx.",
    )
    router_switch_command = forms.CharField(
        label="Switch command",
        required=False,
        widget=forms.Textarea(
            attrs=shown_for("strategy", Strategy.BLUE_GREEN, rows=2, **MONOSPACE)
        ),
        help_text="Instead of nginx: run on the router with %colour% and %hosts% (the "
        "colour's host:port addresses, each a quoted word). Exit 0: the traffic moved.",
    )

    STRATEGY_FIELDS = (
        "strategy",
        "max_parallel",
        "batch_size",
        "pause_seconds",
        "canary_count",
        "canary_window_seconds",
        "promotion",
        "router_kind",
        "router_nginx_command",
        "upstream_port",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        servers = Server.objects.filter(project=self.project)
        for name in ("blue_servers", "green_servers", "router"):
            field = self.fields[name]
            assert isinstance(field, forms.ModelChoiceField)
            field.queryset = servers

    def initial_for(self, instance: Any) -> dict[str, Any]:
        initial = super().initial_for(instance)
        initial["servers"] = [server.pk for server in instance.ordered_servers()]
        members = list(instance.members.select_related("server"))
        initial["blue_servers"] = [m.server_id for m in members if m.colour == Colour.BLUE]
        initial["green_servers"] = [m.server_id for m in members if m.colour == Colour.GREEN]
        initial["upstream_lines"] = "\n".join(
            f"{m.server.name} {m.upstream}" for m in members if m.upstream
        )
        return initial

    def clean(self) -> dict[str, Any] | None:
        cleaned = super().clean() or {}
        both = set(cleaned.get("blue_servers") or ()) & set(cleaned.get("green_servers") or ())
        if both:
            self.add_error(
                "green_servers",
                f"A server has one colour: {', '.join(sorted(s.name for s in both))}",
            )
        names = {s.name: s for s in Server.objects.filter(project=self.project)}
        upstreams: dict[str, str] = {}
        for line in cleaned.get("upstream_lines") or []:
            name, _, address = line.strip().rpartition(" ")
            if name.strip() not in names:
                self.add_error("upstream_lines", f"No server is called {name.strip() or line!r}")
                continue
            upstreams[str(names[name.strip()].pk)] = address
        cleaned["upstreams"] = upstreams
        return cleaned

    def service_data(self) -> dict[str, Any]:
        # A strategy field left out (a form from before strategies) keeps what is stored,
        # or the model's default; projects.services checks them with strategy_clean.
        data = super().service_data()
        for name in self.STRATEGY_FIELDS:
            if data.get(name) in (None, ""):
                del data[name]
        blue = {s.pk for s in data.pop("blue_servers", None) or ()}
        green = {s.pk for s in data.pop("green_servers", None) or ()}
        data.pop("upstream_lines", None)
        # The form shows every member's colour and address: what is not given is cleared.
        chosen = [server.pk for server in data.get("servers", [])]
        given = data.pop("upstreams", {})
        data["colours"] = {
            str(pk): Colour.BLUE if pk in blue else Colour.GREEN if pk in green else ""
            for pk in chosen
        }
        data["upstreams"] = {str(pk): given.get(str(pk), "") for pk in chosen}
        return data


class NotificationForm(SettingForm):
    """The URL and the secret are write-only: never put back into the page, not even after
    an error; left blank on an existing notification, the stored ones stay."""

    model = Notification

    kind = forms.ChoiceField(choices=NotificationKind.choices)
    url = forms.CharField(
        label="URL",
        max_length=2000,
        required=False,
        strip=False,
        widget=forms.PasswordInput(
            render_value=False,
            attrs=shown_for("kind", *URL_KINDS, autocomplete="off", **MONOSPACE),
        ),
        help_text="The incoming-webhook URL (Slack, Discord, Teams) or your endpoint. "
        "Write-only: it carries a token.",
    )
    address = forms.CharField(
        label="Email address",
        max_length=254,
        required=False,
        widget=forms.EmailInput(attrs=shown_for("kind", NotificationKind.EMAIL)),
    )
    secret = forms.CharField(
        max_length=1000,
        required=False,
        strip=False,
        widget=forms.PasswordInput(
            render_value=False,
            attrs=shown_for(
                "kind", NotificationKind.WEBHOOK, autocomplete="new-password", **MONOSPACE
            ),
        ),
        help_text="Signs every delivery (X-Slipway-Signature); at least 16 characters. Write-only.",
    )
    events = forms.MultipleChoiceField(
        choices=NotificationEvent.choices,
        required=False,
        initial=list(NotificationEvent.values),
        widget=forms.CheckboxSelectMultiple,
    )
    servers = servers_field("None ticked: deployments to any server of the project.")
    enabled = forms.BooleanField(required=False, initial=True)

    SECRETS = ("url", "secret")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        instance = self.instance
        if isinstance(instance, Notification):
            if instance.url:
                self.fields[
                    "url"
                ].help_text = f"Stored and hidden (goes to {instance.destination}). Blank keeps it."
            if instance.secret:
                self.fields["secret"].help_text = "Stored and hidden. Blank keeps it."

    def initial_for(self, instance: Any) -> dict[str, Any]:
        initial = super().initial_for(instance)
        for secret in self.SECRETS:
            initial.pop(secret, None)
        return initial

    def service_data(self) -> dict[str, Any]:
        data = super().service_data()
        instance = self.instance if isinstance(self.instance, Notification) else None
        kind = data["kind"]
        # Only what the chosen kind uses, and a secret only when one was typed: blank keeps
        # the stored one (it is never shown, so it cannot be "edited").
        if kind != NotificationKind.EMAIL or (
            instance is not None and instance.kind == kind and data["address"] == instance.address
        ):
            # An unchanged address is not sent: a notification must stay editable (turned
            # off, say) after the administrator removed the mail server.
            data.pop("address")
        for secret in self.SECRETS:
            if not data.get(secret):
                data.pop(secret, None)
        if kind == NotificationKind.EMAIL:
            data.pop("url", None)
        if kind != NotificationKind.WEBHOOK:
            data.pop("secret", None)
        return data


class IntegrationForm(SettingForm):
    """The token is write-only: never put back into the page, not even after an error; left
    blank on an existing integration, the stored one stays."""

    model = Integration

    kind = forms.ChoiceField(choices=IntegrationKind.choices)
    base_url = forms.CharField(
        label="API address",
        max_length=500,
        required=False,
        widget=forms.TextInput(attrs=MONOSPACE),
        help_text="Blank: https://api.github.com, https://gitlab.com/api/v4 or https://sentry.io. "
        "GitHub Enterprise: https://host/api/v3; self-hosted GitLab: https://host/api/v4; "
        "Gitea (required): https://host/api/v1.",
    )
    repository = forms.CharField(
        max_length=255,
        widget=forms.TextInput(attrs=MONOSPACE),
        help_text="owner/repository (GitHub, Gitea); the project's id or group/project "
        "(GitLab); organization/project slugs (Sentry).",
    )
    environment = forms.CharField(
        max_length=100,
        required=False,
        help_text="Blank: the environment of the deployment's servers (production when they "
        "have none or several).",
    )
    token = forms.CharField(
        max_length=1000,
        required=False,
        strip=False,
        widget=forms.PasswordInput(
            render_value=False, attrs={"autocomplete": "new-password", **MONOSPACE}
        ),
        help_text="An API token allowed to write statuses and deployments (GitHub, Gitea), "
        "deployments (GitLab) or releases (Sentry). Write-only.",
    )
    servers = servers_field("None ticked: deployments to any server of the project.")
    enabled = forms.BooleanField(required=False, initial=True)

    SECRETS = ("token",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(self.instance, Integration) and self.instance.token:
            self.fields["token"].help_text = "Stored and hidden. Blank keeps it."

    def initial_for(self, instance: Any) -> dict[str, Any]:
        initial = super().initial_for(instance)
        initial.pop("token", None)
        return initial

    def service_data(self) -> dict[str, Any]:
        data = super().service_data()
        if not data.get("token") and isinstance(self.instance, Integration):
            data.pop("token", None)
        return data


# --------------------------------------------------------------------------- members, tokens


class MemberAddForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=Role.choices, initial=Role.VIEWER)


class MemberRoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class ApiTokenForm(forms.Form):
    name = forms.CharField(
        max_length=100, help_text="What uses it: “CI”, “laptop”…, to tell tokens apart."
    )
    scope = forms.ChoiceField(
        choices=TokenScope.choices,
        initial=TokenScope.READ,
        widget=forms.RadioSelect,
        help_text="It never allows more than your role on a project does.",
    )
    expires_in_days = forms.IntegerField(
        label="Expires in (days)",
        required=False,
        min_value=1,
        max_value=MAX_TOKEN_DAYS,
        help_text="Or give a date below; neither: it works until you revoke it.",
    )
    expires_at = forms.DateTimeField(
        label="Expires at (UTC)",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
    )


# --------------------------------------------------------------------------- accounts


class UserCreateForm(AdminUserCreationForm):  # type: ignore[type-arg]  # not generic at run time
    """Django's own user-creation form (its username rules and password validators), with an
    email address and the choice between a password now and an invitation link."""

    usable_password = forms.ChoiceField(
        label="How they get in",
        required=False,
        initial="false",
        choices={
            "false": "Invite them: a one-time link to choose their own password",
            "true": "Set a password now",
        },
        widget=forms.RadioSelect,
    )

    class Meta(AdminUserCreationForm.Meta):
        fields = ("username", "email")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["email"].help_text = "Where the invitation goes, when mail is set up."
        # The form sits below the list of users: focusing it would scroll the page away.
        self.fields["username"].widget.attrs.pop("autofocus", None)
        self.order_fields(["username", "email", "usable_password", "password1", "password2"])
        for name in ("password1", "password2"):
            self.fields[name].help_text = ""

    def service_data(self) -> dict[str, Any]:
        usable = self.cleaned_data["set_usable_password"]
        return {
            "username": self.cleaned_data["username"],
            "email": self.cleaned_data.get("email", ""),
            "password": self.cleaned_data["password1"] if usable else None,
        }


class SiteSettingsForm(forms.ModelForm):  # type: ignore[type-arg]  # not generic at run time
    class Meta:
        model = SiteSettings
        fields = ("project_creators", "require_two_factor")
        labels = {
            "project_creators": "Who may create projects",
            "require_two_factor": "Require two-factor sign-in for everyone",
        }
        help_texts = {
            "project_creators": "A project runs its build commands on the worker: keep this to "
            "site admins when several teams share Slipway.",
            "require_two_factor": "Users without an authenticator app must set one up at their "
            "next page view.",
        }
        widgets = {"project_creators": forms.RadioSelect}


class OneTimeCodeForm(forms.Form):
    code = forms.CharField(
        label="Code",
        max_length=32,
        help_text="The 6 digits your authenticator app shows, or one of your recovery codes.",
        widget=forms.TextInput(
            attrs={
                "autocomplete": "one-time-code",
                "inputmode": "numeric",
                "autofocus": True,
                **MONOSPACE,
            }
        ),
    )


class TwoFactorDisableForm(forms.Form):
    code = forms.CharField(
        label="Current code",
        max_length=32,
        required=False,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", **MONOSPACE}),
    )
    password = forms.CharField(
        label="Or your password",
        required=False,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )


WEEKDAY_CHOICES = [(str(number), name) for number, name in enumerate(WEEKDAY_NAMES)]


def time_zone_field() -> forms.CharField:
    return forms.CharField(
        label="Time zone",
        max_length=64,
        initial="UTC",
        widget=forms.TextInput(attrs={**MONOSPACE, "placeholder": "Europe/Paris"}),
        help_text="An IANA name (UTC, Europe/Paris, America/New_York): daylight saving time "
        "follows it.",
    )


class WeekdaysField(forms.TypedMultipleChoiceField):
    """Days as numbers, 0 = Monday, ticked in boxes."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("widget", forms.CheckboxSelectMultiple)
        super().__init__(choices=WEEKDAY_CHOICES, coerce=int, **kwargs)

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return [str(item) for item in value]
        return value


class FreezeWindowForm(SettingForm):
    """A freeze window; projects.freeze.freeze_window_clean (through the services) has the
    rules."""

    model = FreezeWindow

    name = forms.CharField(
        max_length=100, widget=forms.TextInput(attrs={"placeholder": "Friday afternoons"})
    )
    kind = forms.ChoiceField(label="When", choices=FreezeKind.choices, initial=FreezeKind.WEEKLY)
    environment = forms.CharField(
        max_length=50,
        required=False,
        help_text="Only servers (or groups) of this environment, such as production; empty: "
        "every server of the project.",
    )
    weekdays = WeekdaysField(
        label="Days",
        widget=forms.CheckboxSelectMultiple(attrs=shown_for("kind", FreezeKind.WEEKLY)),
    )
    start_time = forms.TimeField(
        label="From",
        required=False,
        widget=forms.TimeInput(
            attrs=shown_for("kind", FreezeKind.WEEKLY, type="time"), format="%H:%M"
        ),
    )
    end_time = forms.TimeField(
        label="Until",
        required=False,
        widget=forms.TimeInput(
            attrs=shown_for("kind", FreezeKind.WEEKLY, type="time"), format="%H:%M"
        ),
        help_text="At or before the start: the window runs past midnight into the next day; "
        "equal to it: whole days.",
    )
    start_date = forms.DateField(
        label="From the day",
        required=False,
        widget=forms.DateInput(attrs=shown_for("kind", FreezeKind.DATES, type="date")),
    )
    end_date = forms.DateField(
        label="To the day (included)",
        required=False,
        widget=forms.DateInput(attrs=shown_for("kind", FreezeKind.DATES, type="date")),
    )
    time_zone = time_zone_field()
