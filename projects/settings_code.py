"""Settings as code (docs/settings-as-code.md): a project's settings as one document, read
from a repository's ``.slipway.yml`` for a deployment, and exported or imported as YAML.

One document describes a project's settings: the template document
(projects.services.template_document: no secret in it) with the groups' strategies. A
``.slipway.yml`` holds a part of it (``FILE_KEYS``, the published schema
docs/slipway.schema.json); an export holds all of it, and an import takes it back.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import yaml
from django.contrib.auth.models import User
from django.db import models, transaction

from builds.engine import settings_file
from builds.engine.errors import InvalidInput
from builds.engine.excludes import parse_rule
from builds.engine.masking import config_file_skeleton
from builds.engine.settings_file import SettingsFile, SettingsFileError
from projects.models import (
    BuildCommand,
    Command,
    ConfigFile,
    EnvironmentVariable,
    ExcludedFile,
    Project,
)
from projects.services import (
    TEMPLATE_PROJECT_FIELDS,
    TEMPLATE_SETTINGS,
    audit_record,
    model_update,
    project_clean,
    setting_clean,
    template_document,
    url_without_credentials,
)
from servers.health import (
    HEALTH_CHECK_SETTINGS,
    blue_green_check,
    health_check_clean,
    strategy_clean,
)
from servers.models import HealthCheck, ServerGroup, Strategy

#: What a .slipway.yml may set, in the order the log and the pages list them.
FILE_KEYS = (
    "build_commands",
    "commands",
    "excluded_files",
    "shared_paths",
    "health_checks",
    "groups",
)
#: A group's strategy fields: what the file's and an export's ``groups`` hold per group.
GROUP_STRATEGY_FIELDS = (
    "strategy",
    "max_parallel",
    "batch_size",
    "canary_count",
    "canary_window_seconds",
    "promotion",
    "pause_seconds",
)
#: The settings of each list of items, with their fields (as a template copies them).
_ITEMS: dict[str, tuple[type[models.Model], tuple[str, ...]]] = {
    **TEMPLATE_SETTINGS,
    "health_checks": (HealthCheck, HEALTH_CHECK_SETTINGS),
}
#: The name an imported document's errors give it.
IMPORT_NAME = "the imported settings"
#: How a YAML export starts.
EXPORT_HEADER = (
    "# Slipway project settings (docs/settings-as-code.md). Secrets are left out: a secret\n"
    "# variable's value is empty and a config file holds its keys only; importing this keeps\n"
    "# the values stored in Slipway for those.\n"
)


def _strings(description: str) -> dict[str, Any]:
    return {"description": description, "type": "array", "items": {"type": "string"}}


def _export_schema() -> dict[str, Any]:
    """The published schema with an export's own keys (the project's, never a file's)."""
    groups = copy.deepcopy(settings_file.schema()["properties"]["groups"])
    groups["additionalProperties"]["properties"]["strategy"] = {"enum": list(Strategy.values)}
    item = {"type": "object", "additionalProperties": False}
    return settings_file.schema_with(
        {
            "groups": groups,
            "cache_paths": _strings("Kept between builds on the worker."),
            "generated_paths": _strings("Globs of what deploy commands write on the server."),
            "build_network": {"type": "boolean"},
            "export_ignore": {"type": "boolean"},
            "submodules": {"type": "boolean"},
            "config_files": {
                "type": "array",
                "items": {
                    **item,
                    "required": ["path"],
                    "properties": {
                        "path": {"type": "string", "minLength": 1},
                        "body": {"type": "string"},
                        "description": {"type": "string", "maxLength": 255},
                        "mode": {"type": "string"},
                        "group": {"type": "string"},
                    },
                },
            },
            "environment_variables": {
                "type": "array",
                "items": {
                    **item,
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "value": {"type": "string"},
                        "secret": {"type": "boolean"},
                        "build": {"type": "boolean"},
                        "servers": {"type": "boolean"},
                    },
                },
            },
        }
    )


# --------------------------------------------------------------------------- the document


def settings_document(project: Project) -> dict[str, Any]:
    """Every setting an export holds, without a secret: ``version``, the template document
    (template_document: paths, switches, build and SSH commands, config files as
    skeletons, variables with secret values empty, excluded files, health checks) and
    ``groups``: group name -> its strategy fields."""
    document: dict[str, Any] = {"version": 1, **template_document(project)}
    document["groups"] = {
        group.name: {field: getattr(group, field) for field in GROUP_STRATEGY_FIELDS}
        for group in ServerGroup.objects.filter(project=project).order_by("name")
    }
    return document


def _default(model: type[models.Model], field: str) -> Any:
    found = model._meta.get_field(field)
    assert isinstance(found, models.Field)  # a template's fields are the model's own
    return found.get_default()


def _normalised(key: str, value: Any) -> Any:
    """``value`` of setting ``key`` with every item's missing fields at their defaults, so
    that a file's short form compares equal to the rows it stands for."""
    if key in _ITEMS and isinstance(value, list):
        model, fields = _ITEMS[key]
        return [
            {field: item[field] if field in item else _default(model, field) for field in fields}
            if isinstance(item, Mapping)
            else item
            for item in value
        ]
    return value


def _detail(exc: InvalidInput) -> str:
    return str(exc).removeprefix(f"{exc.field}: ")


def _clean_items(parsed: SettingsFile, key: str, clean: Any) -> list[dict[str, Any]]:
    cleaned = []
    for index, item in enumerate(_normalised(key, parsed.data[key])):
        try:
            cleaned.append(clean(item))
        except InvalidInput as exc:
            raise parsed.error((key, index, exc.field), _detail(exc)) from None
    return cleaned


def _in_place(clean_model: type[models.Model]) -> Any:
    def clean(item: dict[str, Any]) -> dict[str, Any]:
        setting_clean(clean_model, item)
        return item

    return clean


def _clean_groups(
    parsed: SettingsFile, project: Project, *, allow_blue_green: bool
) -> dict[str, dict[str, Any]]:
    groups = {group.name: group for group in ServerGroup.objects.filter(project=project)}
    cleaned: dict[str, dict[str, Any]] = {}
    for name, fields in parsed.data["groups"].items():
        group = groups.get(name)
        if group is None:
            known = ", ".join(sorted(groups)) or "none"
            raise parsed.error(
                ("groups", name), f"the project has no group named {name!r} (its groups: {known})."
            )
        if "batch_size" in fields:
            fields = {**fields, "batch_size": str(fields["batch_size"])}
        wanted = fields.get("strategy", group.strategy)
        if (
            not allow_blue_green
            and wanted != group.strategy
            and Strategy.BLUE_GREEN in (wanted, group.strategy)
        ):
            raise parsed.error(
                ("groups", name, "strategy"),
                "a blue-green group's strategy is set in Slipway, where its router is.",
            )
        try:
            cleaned[name] = strategy_clean(fields)
        except InvalidInput as exc:
            raise parsed.error(("groups", name, exc.field), _detail(exc)) from None
    return cleaned


def settings_clean(
    parsed: SettingsFile,
    *,
    project: Project,
    keys: tuple[str, ...] = FILE_KEYS,
    allow_blue_green: bool = False,
) -> dict[str, Any]:
    """The settings ``parsed`` holds among ``keys``, each checked as the settings pages and
    the API check it, items with their missing fields at their defaults. Raises
    SettingsFileError naming the line and the setting (a group the project lacks, a path
    that leaves the release, a command that is blank...). A group may be made blue-green,
    or stop being one, only when ``allow_blue_green`` (an import, not a repository's file:
    the router is set in Slipway)."""
    data = parsed.data
    cleaned: dict[str, Any] = {}
    for key in keys:
        if key not in data:
            continue
        if key == "groups":
            cleaned[key] = _clean_groups(parsed, project, allow_blue_green=allow_blue_green)
        elif key == "health_checks":
            cleaned[key] = _clean_items(parsed, key, health_check_clean)
        elif key in _ITEMS:
            cleaned[key] = _clean_items(parsed, key, _in_place(_ITEMS[key][0]))
        elif key == "excluded_files":
            for index, pattern in enumerate(data[key]):
                try:
                    parse_rule(pattern)
                except InvalidInput as exc:
                    raise parsed.error((key, index), _detail(exc)) from None
            cleaned[key] = [pattern.strip() for pattern in data[key] if pattern.strip()]
        else:
            cleaned[key] = _project_field_clean(parsed, key)
    return cleaned


def _project_field_clean(parsed: SettingsFile, key: str) -> Any:
    """A project field (shared_paths...) checked by project_clean; a list's items one by
    one first, so that the error names the item's line."""
    value = parsed.data[key]
    for index, item in enumerate(value if isinstance(value, list) else []):
        try:
            project_clean({key: [item]})
        except InvalidInput as exc:
            raise parsed.error((key, index), _detail(exc)) from None
    try:
        return project_clean({key: value})[key]
    except InvalidInput as exc:
        raise parsed.error((key,), _detail(exc)) from None


def _project_value(project: Project, document: Mapping[str, Any], key: str, file: Any) -> Any:
    if key == "groups":
        # The groups the file names, with every strategy field as the project has it.
        return {name: dict(document["groups"].get(name, {})) for name in file}
    return _normalised(key, document[key])


def settings_compare(
    project: Project, cleaned: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """What a deployment runs with and what the file changed: (effective, changed).

    ``effective``: each of FILE_KEYS, from the file when it has it, else the project's
    (a group's strategy: the project's fields with the file's on top). ``changed``: key ->
    {"project": the project's value, "file": the file's}, only for keys whose value
    differs. Values are settings_document's."""
    document = settings_document(project)
    effective: dict[str, Any] = {}
    changed: dict[str, dict[str, Any]] = {}
    for key in FILE_KEYS:
        if key not in cleaned:
            effective[key] = document[key]
            continue
        own = _project_value(project, document, key, cleaned[key])
        value = cleaned[key]
        if key == "groups":
            value = {name: {**own[name], **fields} for name, fields in value.items()}
            effective[key] = {**document["groups"], **value}
        else:
            effective[key] = value
        if own != value:
            changed[key] = {"project": own, "file": value}
    return effective, changed


def repository_settings(project: Project, content: bytes | None, revision: str) -> dict[str, Any]:
    """What a revision's .slipway.yml (``content``, None when it has none) sets for
    ``project``, as Deployment.settings_file records it: {"revision", "found", "keys",
    "changed", "effective"}; "values" holds the file's checked settings (FILE_KEYS).
    Raises SettingsFileError (an InvalidInput) naming the line."""
    if content is None:
        effective, _ = settings_compare(project, {})
        return {
            "revision": revision,
            "found": False,
            "keys": [],
            "changed": {},
            "effective": effective,
            "values": {},
        }
    cleaned = settings_clean(settings_file.parse(content), project=project)
    effective, changed = settings_compare(project, cleaned)
    return {
        "revision": revision,
        "found": True,
        "keys": [key for key in FILE_KEYS if key in cleaned],
        "changed": _shown(changed),
        "effective": _shown(effective),
        "values": cleaned,
    }


def _shown(value: Any) -> Any:
    """A copy of ``value`` (settings, or changes of settings) with each health check's URL
    without its user and password, as template_document shows the project's own."""
    if isinstance(value, dict):
        return {
            key: [
                {**check, "url": url_without_credentials(str(check.get("url", "")))}
                for check in item
            ]
            if key == "health_checks" and isinstance(item, list)
            else _shown(item)
            for key, item in value.items()
        }
    return copy.deepcopy(value)


def settings_from_file_keys(project: Project) -> dict[str, str]:
    """The keys the project's last .slipway.yml set (from the latest deployment or preview
    that read one), key -> that revision; {} when the project does not take settings from
    its repository or none was read yet. The settings pages badge these values."""
    if not project.settings_from_repository:
        return {}
    from_file = (
        project.deployments.exclude(settings_file={})
        .order_by("-pk")
        .values_list("settings_file", flat=True)
        .first()
    )
    if not from_file:
        return {}
    return {key: str(from_file.get("revision", "")) for key in from_file.get("keys", [])}


# --------------------------------------------------------------------------- export / import


def settings_export_yaml(project: Project) -> str:
    """settings_document(project) as YAML (block style, keys in the document's order),
    after EXPORT_HEADER. The caller checked the user may read the project's settings."""
    return EXPORT_HEADER + yaml.safe_dump(
        settings_document(project), sort_keys=False, allow_unicode=True, width=100
    )


def _stored(project: Project, key: str) -> list[dict[str, Any]]:
    """The project's rows of ``key`` as they are stored, secrets and all (compared with an
    import's values, which _keep_secrets completed)."""
    model, fields = _ITEMS[key]
    return [
        {field: getattr(row, field) for field in fields}
        for row in model._default_manager.filter(project=project)
    ]


def _keep_secrets(project: Project, key: str, items: list[dict[str, Any]]) -> None:
    """An export leaves secrets out; importing it keeps the stored ones (in place): a
    secret variable's value, a config file's values, a health check's URL's password."""
    if key == "health_checks":
        urls = [check["url"] for check in _stored(project, key)]
        for item, url in zip(items, urls, strict=False):
            if item.get("url") and item["url"] == url_without_credentials(url):
                item["url"] = url
    if key == "environment_variables":
        stored = {
            v.name: v.value
            for v in EnvironmentVariable.objects.filter(project=project, secret=True)
        }
        for item in items:
            if item.get("secret") and not item.get("value") and item["name"] in stored:
                item["value"] = stored[item["name"]]
    if key == "config_files":
        bodies = {c.path: c.body for c in ConfigFile.objects.filter(project=project)}
        for item in items:
            body = bodies.get(item["path"])
            if body is not None and item.get("body", "") == config_file_skeleton(body):
                item["body"] = body


def _import_clean(project: Project, parsed: SettingsFile) -> dict[str, Any]:
    keys = FILE_KEYS + tuple(k for k in _ITEMS if k not in FILE_KEYS)
    cleaned = settings_clean(parsed, project=project, keys=keys, allow_blue_green=True)
    for key in TEMPLATE_PROJECT_FIELDS:
        if key in parsed.data and key not in cleaned:
            cleaned[key] = _project_field_clean(parsed, key)
    if "health_checks" in cleaned:
        _keep_secrets(project, "health_checks", cleaned["health_checks"])
    for key in ("environment_variables", "config_files"):
        if key in cleaned:
            _keep_secrets(project, key, cleaned[key])
            field = "name" if key == "environment_variables" else "path"
            names = [item[field] for item in cleaned[key]]
            for index, name in enumerate(names):
                if name in names[:index]:
                    raise parsed.error((key, index, field), f"{name!r} is given twice.")
    return cleaned


def _current(project: Project, document: Mapping[str, Any], key: str) -> Any:
    if key in ("environment_variables", "config_files", "health_checks"):
        return _stored(project, key)
    return _normalised(key, document[key])


def settings_import(
    *, project: Project, actor: User, content: bytes, dry_run: bool = False
) -> dict[str, dict[str, Any]]:
    """Apply an export (YAML, as settings_export_yaml writes it) to ``project``: each key
    present whose value differs replaces the project's (its rows deleted and created
    anew; a group's strategy fields set). A key left out stays as it is; so does a secret
    variable given without its value, and a config file given as its stored body's
    skeleton. Returns key -> {"project": before, "file": after} for each key that changes;
    with ``dry_run`` nothing is saved. The caller checked ``actor`` may configure the
    project. Raises SettingsFileError (an InvalidInput) naming the line and the setting."""
    parsed = settings_file.parse(content, name=IMPORT_NAME, against=_export_schema(), refused={})
    cleaned = _import_clean(project, parsed)
    document = settings_document(project)
    changes: dict[str, dict[str, Any]] = {}
    for key, value in cleaned.items():
        if key == "groups":
            own = {name: document["groups"][name] for name in value}
            value = {name: {**own[name], **fields} for name, fields in value.items()}
        else:
            own = _current(project, document, key)
        if own != value:
            changes[key] = {"project": own, "file": value}
    if dry_run or not changes:
        return _without_secrets(changes)
    with transaction.atomic():
        _apply(project, changes, parsed)
        audit_record(
            project=project,
            actor=actor,
            action="project.settings_imported",
            target=project.slug,
            fields=sorted(changes),
        )
    return _without_secrets(changes)


def _without_secrets(changes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What an import answers: as settings_document shows values, no secret in it."""
    shown = copy.deepcopy(changes)
    for side in shown.get("environment_variables", {}).values():
        for item in side:
            if item.get("secret"):
                item["value"] = ""
    for side in shown.get("config_files", {}).values():
        for item in side:
            item["body"] = config_file_skeleton(item.get("body", ""))
    without: dict[str, dict[str, Any]] = _shown(shown)
    return without


def _apply(
    project: Project, changes: Mapping[str, Mapping[str, Any]], parsed: SettingsFile
) -> None:
    fields = {k: v["file"] for k, v in changes.items() if k in TEMPLATE_PROJECT_FIELDS}
    if fields:
        model_update(instance=project, data=fields)
    for key, change in changes.items():
        if key == "groups":
            for name, strategy in change["file"].items():
                group = ServerGroup.objects.select_for_update().get(project=project, name=name)
                model_update(instance=group, data=strategy)
                try:
                    blue_green_check(group)
                except InvalidInput as exc:
                    raise parsed.error(("groups", name, "strategy"), _detail(exc)) from None
        elif key == "excluded_files":
            ExcludedFile.objects.filter(project=project).delete()
            ExcludedFile.objects.bulk_create(
                ExcludedFile(project=project, pattern=pattern) for pattern in change["file"]
            )
        elif key in _ITEMS:
            model, _ = _ITEMS[key]
            model._default_manager.filter(project=project).delete()
            positioned = model in (BuildCommand, Command)
            for position, item in enumerate(change["file"], start=1):
                extra = {"position": position} if positioned else {}
                model._default_manager.create(project=project, **item, **extra)


__all__ = [
    "FILE_KEYS",
    "SettingsFileError",
    "repository_settings",
    "settings_clean",
    "settings_compare",
    "settings_document",
    "settings_export_yaml",
    "settings_from_file_keys",
    "settings_import",
]
