"""The dashboard's form to start a deployment (or its preview)."""

from __future__ import annotations

from typing import Any

from django import forms

from builds.engine.git import Commit
from projects.forms import MONOSPACE
from projects.models import Project
from servers.models import Server, ServerGroup, Strategy


class ServerChoiceField(forms.ModelMultipleChoiceField):  # type: ignore[type-arg]
    """Servers named with what a person deploying needs to know about each."""

    def label_from_instance(self, obj: Any) -> str:
        notes = [obj.environment] if obj.environment else []
        if not obj.trusted:
            notes.append("host key not trusted yet")
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
        choices=[("", "The group's (all at once without a group)"), *Strategy.choices],
        help_text="For this deployment only; see docs/strategies.md.",
    )
    full = forms.BooleanField(label="Upload every file, not only the changes", required=False)
    skip_build = forms.BooleanField(label="Skip the build commands", required=False)
    skip_cache = forms.BooleanField(label="Build without the build cache", required=False)

    def __init__(self, *args: Any, project: Project, commits: list[Commit], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        servers = self.fields["servers"]
        group = self.fields["group"]
        assert isinstance(servers, forms.ModelMultipleChoiceField)
        assert isinstance(group, forms.ModelChoiceField)
        servers.queryset = Server.objects.filter(project=project)
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
