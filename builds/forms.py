"""The dashboard's forms to start a deployment (or its preview) and to schedule one."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from django import forms
from django.db.models import Q

from builds.engine.git import Commit
from builds.models import Schedule, ScheduleKind
from builds.services import MAX_REASON_LENGTH
from projects.forms import (
    MONOSPACE,
    SettingForm,
    WeekdaysField,
    servers_field,
    shown_for,
    time_zone_field,
)
from projects.models import Membership, Project
from servers.models import Server, ServerGroup, Strategy


class ServerChoiceField(forms.ModelMultipleChoiceField):  # type: ignore[type-arg]
    """Servers named with what a person deploying needs to know about each."""

    def _check_values(self, value: Any) -> Any:
        # An id past the database's integers is no server (SQLite raises OverflowError).
        for pk in value or ():
            text = str(pk)
            if not text.isascii() or not text.isdigit() or not 0 < int(text) < 2**63:
                raise forms.ValidationError(
                    self.error_messages["invalid_choice"],
                    code="invalid_choice",
                    params={"value": pk},
                )
        return super()._check_values(value)  # type: ignore[misc]

    def label_from_instance(self, obj: Any) -> str:
        notes = [obj.environment] if obj.environment else []
        if not obj.trusted:
            notes.append(f"{obj.untrusted_hop.removeprefix('its ')} not trusted yet")
        if not obj.enabled:
            notes.append("disabled")
        return f"{obj.name} ({', '.join(notes)})" if notes else obj.name


class DeploymentForm(forms.Form):
    servers = ServerChoiceField(
        queryset=Server.objects.none(), required=False, widget=forms.CheckboxSelectMultiple
    )
    group = forms.ModelChoiceField(
        queryset=ServerGroup.objects.none(), required=False, empty_label="No group"
    )
    # A commit listed from the mirror, or "" for the branch head; any SHA is accepted here
    # (the list may have moved on since the page was drawn): the service checks the ref.
    revision = forms.CharField(required=False, max_length=255, widget=forms.RadioSelect(choices=[]))
    ref = forms.CharField(
        label="Or a branch, tag or SHA",
        required=False,
        max_length=255,
        widget=forms.TextInput(
            attrs={**MONOSPACE, "placeholder": "v1.4.2, release/2026-11, 3f2a9c1…"}
        ),
    )
    strategy = forms.ChoiceField(
        label="Strategy",
        required=False,
        # Blue-green needs the group's colours and router: a group's strategy, never an override.
        choices=[
            ("", "The group's (all at once without a group)"),
            *((value, label) for value, label in Strategy.choices if value != Strategy.BLUE_GREEN),
        ],
        help_text="For this deployment only; see docs/strategies.md.",
    )
    full = forms.BooleanField(label="Upload every file, not only the changes", required=False)
    skip_build = forms.BooleanField(label="Skip the build commands", required=False)
    skip_cache = forms.BooleanField(label="Build without the build cache", required=False)
    freeze_override_reason = forms.CharField(
        label="Why deploy during the freeze",
        required=False,
        max_length=MAX_REASON_LENGTH,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Only a project admin may deploy during a freeze; the reason is kept in the "
        "audit log.",
    )
    gates_override_reason = forms.CharField(
        label="Why deploy past the gates",
        required=False,
        max_length=MAX_REASON_LENGTH,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Only a project admin may deploy past a gate that did not pass; the reason "
        "is kept in the audit log (docs/gates.md).",
    )

    def __init__(
        self,
        *args: Any,
        project: Project,
        commits: list[Commit],
        membership: Membership | None = None,
        **kwargs: Any,
    ) -> None:
        """``membership``: the person deploying; a deployer with deploy rights is offered
        only the servers they cover (the service refuses the others anyway)."""
        super().__init__(*args, **kwargs)
        servers = self.fields["servers"]
        group = self.fields["group"]
        assert isinstance(servers, forms.ModelMultipleChoiceField)
        assert isinstance(group, forms.ModelChoiceField)
        servers.queryset = Server.objects.filter(project=project)
        if membership is not None and membership.is_limited:
            servers.queryset = servers.queryset.filter(
                Q(environment__in=membership.deploy_environments)
                | Q(pk__in=membership.deploy_servers.values("pk"))
            )
        group.queryset = ServerGroup.objects.filter(project=project)
        choices = [
            ("", f"The head of the branch ({project.branch} unless a server says otherwise)")
        ]
        choices += [(commit.sha, commit.sha) for commit in commits]
        widget = self.fields["revision"].widget
        assert isinstance(widget, forms.RadioSelect)
        widget.choices = choices
        self.commits = {commit.sha: commit for commit in commits}

    def chosen_revision(self) -> str:
        return str(self.cleaned_data.get("ref") or self.cleaned_data.get("revision") or "").strip()


class ScheduleForm(SettingForm):
    """A scheduled deployment; builds.schedules (through its services) has the rules."""

    model = Schedule

    name = forms.CharField(
        max_length=100, widget=forms.TextInput(attrs={"placeholder": "Nightly staging"})
    )
    kind = forms.ChoiceField(label="When", choices=ScheduleKind.choices, initial=ScheduleKind.DAILY)
    run_at = forms.DateTimeField(
        label="Date and time",
        required=False,
        widget=forms.DateTimeInput(
            attrs=shown_for("kind", ScheduleKind.ONCE, type="datetime-local"),
            format="%Y-%m-%dT%H:%M",
        ),
        help_text="In the time zone below.",
    )
    time_of_day = forms.TimeField(
        label="At",
        required=False,
        widget=forms.TimeInput(
            attrs=shown_for("kind", ScheduleKind.DAILY, ScheduleKind.WEEKLY, type="time"),
            format="%H:%M",
        ),
    )
    weekdays = WeekdaysField(
        label="On",
        widget=forms.CheckboxSelectMultiple(attrs=shown_for("kind", ScheduleKind.WEEKLY)),
    )
    cron = forms.CharField(
        label="Cron expression",
        required=False,
        max_length=100,
        widget=forms.TextInput(
            attrs=shown_for("kind", ScheduleKind.CRON, placeholder="0 4 * * 1-5", **MONOSPACE)
        ),
        help_text="Five fields: minute hour day-of-month month day-of-week.",
    )
    time_zone = time_zone_field()
    group = forms.ModelChoiceField(
        queryset=ServerGroup.objects.none(),
        required=False,
        empty_label="No group: the servers below",
    )
    servers = servers_field(help_text="Or a group above.")
    revision = forms.CharField(
        max_length=255,
        required=False,
        widget=forms.TextInput(attrs={**MONOSPACE, "placeholder": "main"}),
        help_text="A branch, tag or SHA; empty: the group's branch, or the servers'.",
    )
    skip_unchanged = forms.BooleanField(
        label="Skip a slot when nothing changed since the last deployment",
        required=False,
        initial=True,
    )
    enabled = forms.BooleanField(label="Enabled (untick to pause)", required=False, initial=True)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        group = self.fields["group"]
        assert isinstance(group, forms.ModelChoiceField)
        group.queryset = ServerGroup.objects.filter(project=self.project)

    def initial_for(self, instance: Any) -> dict[str, Any]:
        initial = super().initial_for(instance)
        if instance.run_at is not None:
            # Shown as the wall-clock time it was given in, in the schedule's zone.
            initial["run_at"] = instance.run_at.astimezone(ZoneInfo(instance.time_zone)).replace(
                tzinfo=None
            )
        return initial

    def service_data(self) -> dict[str, Any]:
        data = super().service_data()
        if data.get("run_at") is not None:
            # Django read it in its own zone (UTC); it is a wall-clock time in time_zone.
            data["run_at"] = data["run_at"].replace(tzinfo=None)
        return data
