"""Settings as code: a repository's ``.slipway.yml`` read with the line of every value and
checked against the published JSON schema (docs/slipway.schema.json, served at
/schema/slipway.json; docs/settings-as-code.md).

YAML 1.1 as PyYAML's safe loader reads it (https://pyyaml.org/wiki/PyYAMLDocumentation),
one document, a mapping at the top; the schema is JSON Schema draft 2020-12
(https://json-schema.org/draft/2020-12). Anchors and aliases are refused (a few lines of
aliases expand to millions of nodes: the "billion laughs"), and so are a file over
``MAX_BYTES``, more than ``MAX_NODES`` nodes, a key that is not a string or given twice.
Every error names the line: ``.slipway.yml line 7: build_commands[0].timeout_seconds:
must be a whole number (integer), not 'ten'``.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from builds.engine.errors import InvalidInput

#: The file's name, at the top of the repository (not under the project's subdirectory).
FILE_NAME = ".slipway.yml"
#: The largest file read (bytes): settings are a few kilobytes.
MAX_BYTES = 256 * 1024
#: The most YAML events (scalars, mappings, sequences) a file may hold.
MAX_NODES = 50_000
#: The deepest nesting of lists and mappings (the settings go three deep; YAML's composer
#: recurses once per level, so thousands of ``[`` would exhaust Python's stack).
MAX_DEPTH = 32
#: The published schema, the one source of the file's format.
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "slipway.schema.json"

#: Keys a repository may never set, with the reason said to the user.
REFUSED_KEYS: Mapping[str, str] = {
    "environment_variables": "environment variables may hold secrets; they stay in Slipway",
    "config_files": "config files hold secrets; they stay in Slipway",
    "servers": "servers and their credentials stay in Slipway",
    "repository_url": "the repository is set in Slipway",
    "repository_token": "the repository's token is a secret; it stays in Slipway",
    "private_key": "keys stay in Slipway",
    "build_network": "whether builds reach the network is set in Slipway",
}

PathKey = tuple[str | int, ...]


class SettingsFileError(InvalidInput):
    """A settings file refused; ``line`` is 1-based (None: the whole file)."""

    code = "settings_file_invalid"

    def __init__(self, message: str, *, line: int | None, path: str = "", name: str) -> None:
        self.line = line
        self.path = path
        self.detail = message
        where = f"{name} line {line}" if line else name
        super().__init__(f"{where}: {path}" if path else where, message)

    @property
    def located(self) -> str:
        """The error without the file's name: ``line 7: commands[0].stage: ...``."""
        parts = [f"line {self.line}"] if self.line else []
        return ": ".join([*parts, *([self.path] if self.path else []), self.detail])


def dotted(path: PathKey) -> str:
    """``("build_commands", 0, "command")`` as ``build_commands[0].command``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


@dataclass(frozen=True)
class SettingsFile:
    """A parsed settings file: its data (plain JSON types) and the 1-based line of each
    value by its path."""

    data: dict[str, Any]
    lines: dict[PathKey, int] = field(default_factory=dict)
    name: str = FILE_NAME

    def line_of(self, path: PathKey) -> int | None:
        """The line of ``path``'s value, or of its nearest parent that has one."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None

    def error(self, path: PathKey, message: str) -> SettingsFileError:
        return SettingsFileError(
            message, line=self.line_of(path), path=dotted(path), name=self.name
        )


@functools.cache
def schema() -> dict[str, Any]:
    """The published schema (docs/slipway.schema.json) as a dict."""
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
    return loaded


def schema_with(extra: Mapping[str, Any]) -> dict[str, Any]:
    """The published schema with more top-level ``properties`` (an export's own keys)."""
    extended = copy.deepcopy(schema())
    extended["properties"].update(extra)
    return extended


def parse(
    content: bytes,
    *,
    name: str = FILE_NAME,
    against: Mapping[str, Any] | None = None,
    refused: Mapping[str, str] = REFUSED_KEYS,
) -> SettingsFile:
    """Read ``content`` (bytes of YAML) and check it against ``against`` (the published
    schema by default) and ``refused`` (keys never taken, with the reason).

    Returns a SettingsFile; raises SettingsFileError (an InvalidInput) naming the line and
    the setting: not UTF-8, over MAX_BYTES, not YAML, an anchor or alias, not a mapping, a
    key twice, a refused key, or the first value the schema refuses (in the file's order).
    """
    if len(content) > MAX_BYTES:
        raise SettingsFileError(
            f"is {len(content)} bytes; the most read is {MAX_BYTES} bytes.", line=None, name=name
        )
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SettingsFileError(
            "is not UTF-8 text.", line=content[: exc.start].count(b"\n") + 1, name=name
        ) from None
    node = _compose(text, name)
    lines: dict[PathKey, int] = {}
    data = _construct(node, (), lines, name) if node is not None else {}
    if not isinstance(data, dict):
        raise SettingsFileError(
            "must be a mapping of settings (build_commands: ..., shared_paths: ...).",
            line=node.start_mark.line + 1 if node is not None else None,
            name=name,
        )
    parsed = SettingsFile(data=data, lines=lines, name=name)
    for key in data:
        if key in refused:
            raise parsed.error((key,), f"cannot come from {name}: {refused[key]}.")
    _validate(parsed, against if against is not None else schema())
    return parsed


def _compose(text: str, name: str) -> yaml.Node | None:
    depth = 0
    try:
        for count, event in enumerate(yaml.parse(text, Loader=yaml.SafeLoader)):
            line = event.start_mark.line + 1 if event.start_mark is not None else None
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise SettingsFileError(
                        f"nests lists and mappings more than {MAX_DEPTH} deep.",
                        line=line,
                        name=name,
                    )
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise SettingsFileError(
                    "anchors and aliases (&name, *name) are not allowed; write the value out.",
                    line=line,
                    name=name,
                )
            if count > MAX_NODES:
                raise SettingsFileError(
                    f"holds more than {MAX_NODES} values.", line=line, name=name
                )
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "is not valid YAML"
        raise SettingsFileError(
            f"is not valid YAML: {problem}.", line=mark.line + 1 if mark else None, name=name
        ) from None
    except yaml.YAMLError as exc:
        raise SettingsFileError(f"is not valid YAML: {exc}", line=None, name=name) from None


def _construct(node: yaml.Node, path: PathKey, lines: dict[PathKey, int], name: str) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        mapping: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR_TAG:
                raise SettingsFileError(
                    "every key must be text.", line=line, path=dotted(path), name=name
                )
            key = str(key_node.value)
            problem = _text_problem(key)
            if problem:
                raise SettingsFileError(f"a key {problem}", line=line, path=dotted(path), name=name)
            if key in mapping:
                raise SettingsFileError(
                    f"{key!r} is given twice.", line=line, path=dotted(path), name=name
                )
            mapping[key] = _construct(value_node, (*path, key), lines, name)
            if not isinstance(value_node, yaml.ScalarNode):
                # A list or mapping under its key starts on the key's line, for the user.
                lines[(*path, key)] = line
        return mapping
    if isinstance(node, yaml.SequenceNode):
        return [
            _construct(item, (*path, index), lines, name) for index, item in enumerate(node.value)
        ]
    try:
        value = _SCALARS.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        raise SettingsFileError(f"{exc}", line=lines[path], path=dotted(path), name=name) from None
    except (ValueError, OverflowError):
        # An integer of thousands of digits (Python's int conversion limit) and the like.
        raise SettingsFileError(
            "is not a value a setting takes (a number far too long?).",
            line=lines[path],
            path=dotted(path),
            name=name,
        ) from None
    if isinstance(value, str):
        # "\0" and "\ud800" are valid YAML escapes, but no database or page can hold them.
        problem = _text_problem(value)
        if problem:
            raise SettingsFileError(problem, line=lines[path], path=dotted(path), name=name)
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    # A date, bytes (!!binary), a set...: no setting takes one; the schema names the type.
    return str(value) if not isinstance(value, float | int) else value


def _text_problem(text: str) -> str | None:
    """Why a string of the file cannot be kept (NUL, a lone surrogate: valid YAML escapes,
    ``"\\0"`` and ``"\\ud800"``, that no database or page can hold), or None."""
    if "\x00" in text:
        return "contains a NUL character (\\0); remove it."
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (half of a UTF-16 pair); write valid Unicode."
    return None


_STR_TAG = "tag:yaml.org,2002:str"
#: Builds scalars only (mappings and sequences are walked above, keeping their lines).
_SCALARS = yaml.SafeLoader("")


def _validate(parsed: SettingsFile, against: Mapping[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(against)
    errors = list(validator.iter_errors(parsed.data))
    if not errors:
        return
    located = [(_error_path(error), error) for error in errors]
    # The first in the file's order: the line, then the path.
    path, first = min(located, key=lambda item: (parsed.line_of(item[0]) or 0, len(item[0])))
    raise parsed.error(path, _message(first))


def _error_path(error: jsonschema.ValidationError) -> PathKey:
    path: PathKey = tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        unexpected = sorted(key for key in error.instance if key not in allowed)
        if unexpected:
            return (*path, unexpected[0])
    return path


_TYPE_NAMES = {
    "integer": "a whole number (integer)",
    "string": "text",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "empty (null)",
    "number": "a number",
}


def _message(error: jsonschema.ValidationError) -> str:
    validator = str(error.validator)
    value = error.validator_value
    instance = error.instance
    if validator == "type":
        kinds = [value] if isinstance(value, str) else list(value)
        wanted = " or ".join(_TYPE_NAMES.get(kind, kind) for kind in kinds)
        return f"must be {wanted}, not {instance!r}."
    if validator == "enum":
        return f"{instance!r} must be one of {', '.join(str(v) for v in value)}."
    if validator == "const":
        return f"must be {value!r}, not {instance!r}."
    if validator == "required":
        missing = [key for key in value if key not in instance]
        return f"needs {', '.join(missing)}."
    if validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        return "is not a setting here" + (f"; known: {', '.join(allowed)}." if allowed else ".")
    if validator == "minimum":
        return f"must be {value} or more, not {instance!r}."
    if validator == "maximum":
        return f"must be {value} or less, not {instance!r}."
    if validator in ("minLength", "pattern") and isinstance(instance, str):
        if not instance.strip():
            return "is empty."
        return f"{instance!r} does not have the expected form ({value})."
    if validator in ("maxLength", "maxItems", "maxProperties"):
        return f"is too long: at most {value}."
    return str(error.message)
