"""A .slipway.yml is read with the line of every value and checked against the published
schema (docs/slipway.schema.json); each refusal names the line and the setting."""

from __future__ import annotations

import json

import pytest

from builds.engine.settings_file import MAX_BYTES, SCHEMA_PATH, SettingsFileError, parse
from projects.settings_code import settings_clean
from servers.models import ServerGroup


def _refusal(text: str | bytes) -> str:
    with pytest.raises(SettingsFileError) as caught:
        parse(text.encode() if isinstance(text, str) else text)
    return str(caught.value)


def test_it_reads_a_valid_file_with_its_lines():
    parsed = parse(
        b"version: 1\n"
        b"build_commands:\n"
        b"  - command: npm ci\n"
        b"    watch_globs: [package-lock.json]\n"
        b"  - command: npm run build\n"
        b"groups:\n"
        b"  production: {strategy: canary, canary_count: 1, promotion: manual}\n"
    )

    assert parsed.data["build_commands"][1] == {"command": "npm run build"}
    assert parsed.line_of(("build_commands", 1, "command")) == 5
    assert parsed.line_of(("groups", "production", "strategy")) == 7


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "build_commands:\n  - command: make\n    timeout_seconds: ten\n",
            ".slipway.yml line 3: build_commands[0].timeout_seconds: must be a whole number "
            "(integer) or empty (null), not 'ten'.",
        ),
        (
            "shared_paths: [storage/]\n\ncommands:\n  - stage: after_switch\n",
            ".slipway.yml line 4: commands[0]: needs command.",
        ),
        (
            "commands:\n  - command: ./migrate\n    stage: later\n",
            ".slipway.yml line 3: commands[0].stage: 'later' must be one of before_transfer, "
            "before_switch, after_switch, after_rollback.",
        ),
        (
            "excluded_files: [tests/]\nbuild_comands: []\n",
            ".slipway.yml line 2: build_comands: is not a setting here; known: build_commands, "
            "commands, excluded_files, groups, health_checks, shared_paths, version.",
        ),
        (
            "environment_variables:\n  - name: API_TOKEN\n    value: secret\n",
            ".slipway.yml line 1: environment_variables: cannot come from .slipway.yml: "
            "environment variables may hold secrets; they stay in Slipway.",
        ),
        (
            "config_files: []\n",
            ".slipway.yml line 1: config_files: cannot come from .slipway.yml: config files "
            "hold secrets; they stay in Slipway.",
        ),
        (
            "groups:\n  web:\n    strategy: blue_green\n",
            ".slipway.yml line 3: groups.web.strategy: 'blue_green' must be one of parallel, "
            "prepare_then_switch, rolling, canary.",
        ),
        (
            "shared_paths: [a]\nshared_paths: [b]\n",
            ".slipway.yml line 2: 'shared_paths' is given twice.",
        ),
        ("- build_commands\n", ".slipway.yml line 1: must be a mapping of settings"),
        ("build_commands: [\n", ".slipway.yml line 2: is not valid YAML"),
        (
            "health_checks:\n  - kind: http\n    retries: 0\n",
            ".slipway.yml line 3: health_checks[0].retries: must be 1 or more, not 0.",
        ),
        (
            "build_commands:\n  - command: '   '\n",
            ".slipway.yml line 2: build_commands[0].command: is empty.",
        ),
    ],
)
def test_it_names_the_line_of_what_it_refuses(text, message):
    assert _refusal(text).startswith(message)


def test_it_refuses_anchors_and_aliases():
    # A few lines of aliases would expand to billions of nodes ("billion laughs").
    bomb = 'a: &a ["x","x"]\nb: &b [*a,*a]\nc: &c [*b,*b]\n'

    assert _refusal(bomb) == (
        ".slipway.yml line 1: anchors and aliases (&name, *name) are not allowed; write the "
        "value out."
    )


def test_it_refuses_a_file_over_the_limit_and_one_not_utf8():
    assert "the most read is" in _refusal(b"# " + b"x" * MAX_BYTES)
    assert _refusal(b"shared_paths: []\n# caf\xe9\n") == ".slipway.yml line 2: is not UTF-8 text."


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # YAML's composer recurses once per level: thousands of "[" exhausted the stack.
        (
            "shared_paths: " + "[" * 3000 + "]" * 3000 + "\n",
            ".slipway.yml line 1: nests lists and mappings more than 32 deep.",
        ),
        # An integer past Python's conversion limit (4300 digits) raised ValueError.
        (
            "build_commands:\n  - command: make\n    timeout_seconds: " + "1" * 5000 + "\n",
            ".slipway.yml line 3: build_commands[0].timeout_seconds: is not a value",
        ),
        # "\0" and "\ud800" are valid YAML escapes that no database or page can hold.
        (
            'build_commands:\n  - command: "make \\0"\n',
            ".slipway.yml line 2: build_commands[0].command: contains a NUL character",
        ),
        (
            'build_commands:\n  - command: "make \\ud800"\n',
            ".slipway.yml line 2: build_commands[0].command: contains a lone surrogate",
        ),
        (
            'groups:\n  "\\ud800": {strategy: rolling}\n',
            ".slipway.yml line 2: groups: a key contains a lone surrogate",
        ),
    ],
)
def test_it_refuses_what_would_break_the_reader_with_its_line(text, message):
    assert _refusal(text).startswith(message)


def test_the_schema_is_the_published_file_and_valid_json():
    schema = json.loads(SCHEMA_PATH.read_text())

    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["properties"]) == {
        "version",
        "build_commands",
        "commands",
        "excluded_files",
        "shared_paths",
        "health_checks",
        "groups",
    }


@pytest.mark.django_db
def test_the_schema_is_served_to_anyone(client):
    answer = client.get("/schema/slipway.json")

    assert answer.status_code == 200
    assert answer["Content-Type"] == "application/schema+json"
    assert json.loads(b"".join(answer.streaming_content)) == json.loads(SCHEMA_PATH.read_text())


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "shared_paths:\n  - ../outside\n",
            ".slipway.yml line 2: shared_paths[0]: '../outside' must be a plain relative path",
        ),
        (
            "groups:\n  staging:\n    strategy: rolling\n",
            ".slipway.yml line 2: groups.staging: the project has no group named 'staging' "
            "(its groups: production).",
        ),
        (
            "groups:\n  production:\n    batch_size: 0\n",
            ".slipway.yml line 3: groups.production.batch_size:",
        ),
        # Taken, it failed the deployment with an internal error (re.error).
        (
            'excluded_files:\n  - "*.md"\n  - "[z-a]"\n',
            ".slipway.yml line 3: excluded_files[1]: '[z-a]' is not a valid glob",
        ),
        (
            "health_checks:\n  - kind: http\n    url: ftp://example.com/\n",
            ".slipway.yml line 3: health_checks[0].url: an HTTP check needs an http:// or "
            "https:// URL",
        ),
    ],
)
def test_values_are_checked_as_the_settings_pages_check_them(
    alice, git_repo_factory, project_factory, text, message
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    ServerGroup.objects.create(project=project, name="production")

    with pytest.raises(SettingsFileError) as caught:
        settings_clean(parse(text.encode()), project=project)

    assert str(caught.value).startswith(message)


@pytest.mark.django_db
def test_a_file_may_not_change_a_blue_green_groups_strategy(
    alice, git_repo_factory, project_factory
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    ServerGroup.objects.create(project=project, name="production", strategy="blue_green")

    with pytest.raises(SettingsFileError) as caught:
        settings_clean(parse(b"groups:\n  production:\n    strategy: rolling\n"), project=project)

    assert str(caught.value) == (
        ".slipway.yml line 3: groups.production.strategy: a blue-green group's strategy is "
        "set in Slipway, where its router is."
    )
