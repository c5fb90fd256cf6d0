"""`slipway export` prints a project's settings as YAML, `slipway import` applies a file
(`--dry-run` only says what would change); then a deployment runs what the file says."""

from __future__ import annotations

import yaml

from tests.cli.support import slipway


def test_export_then_import_changes_the_build_command(served, project, sshd_target, tmp_path):
    slug = str(project["slug"])
    api = project["api"]
    created = api.post(
        f"/projects/{slug}/build-commands/", json={"command": "echo one > built.txt"}
    )
    assert created.status_code == 201, created.text

    exported = slipway(served, "export", slug)

    assert exported.returncode == 0, exported.stderr
    document = yaml.safe_load(exported.stdout)
    assert document["build_commands"][0]["command"] == "echo one > built.txt"
    same = tmp_path / "same.yml"
    same.write_text(exported.stdout)
    unchanged = slipway(served, "import", slug, str(same))
    assert unchanged.returncode == 0, unchanged.stderr
    assert "Nothing to change." in unchanged.stdout

    document["build_commands"][0]["command"] = "echo two > built.txt"
    changed = tmp_path / "changed.yml"
    changed.write_text(yaml.safe_dump(document, sort_keys=False))
    dry = slipway(served, "import", slug, str(changed), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "Would change build_commands." in dry.stdout
    assert "echo two > built.txt" in dry.stdout
    assert api.get(f"/projects/{slug}/build-commands/").json()[0]["command"] == (
        "echo one > built.txt"
    )

    applied = slipway(served, "import", slug, str(changed))

    assert applied.returncode == 0, applied.stderr
    assert "Changed build_commands." in applied.stdout
    assert slipway(served, "deploy", slug, "--wait").returncode == 0
    assert (sshd_target.deploy_path / "current" / "built.txt").read_text() == "two\n"


def test_import_names_the_line_of_an_error(served, project, tmp_path):
    slug = str(project["slug"])
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "shared_paths:\n  - storage/\ncommands:\n  - command: ./migrate\n    stage: soon\n"
    )

    refused = slipway(served, "import", slug, str(bad))

    assert refused.returncode == 3
    assert "yaml: line 5: commands[0].stage: 'soon' must be one of" in refused.stderr


def test_import_new_makes_a_project_with_the_settings(served, project, tmp_path):
    slug = str(project["slug"])
    api = project["api"]
    api.post(f"/projects/{slug}/excluded-files/", json={"pattern": "/tests/"})
    exported = tmp_path / "shop.yml"
    exported.write_text(slipway(served, "export", slug).stdout)

    made = slipway(
        served,
        "import",
        "--new",
        f"Copy of {slug}",
        "--repository",
        project["repo"].url,
        str(exported),
    )

    assert made.returncode == 0, made.stderr
    assert "Created the project" in made.stderr
    copy = next(p for p in api.get("/projects/").json() if p["name"] == f"Copy of {slug}")
    assert api.get(f"/projects/{copy['slug']}/settings/").json()["document"]["excluded_files"] == [
        "/tests/"
    ]


def test_import_new_with_a_refused_file_leaves_no_project_behind(served, project, tmp_path):
    # The project was made before the import was refused: it stayed, empty, and took the
    # name, so that the corrected file went into "NAME-2".
    api = project["api"]
    bad = tmp_path / "bad.yml"
    bad.write_text("build_commands:\n  - command: make\n    halt_on_error: maybe\n")

    refused = slipway(
        served, "import", "--new", "Shop EU", "--repository", project["repo"].url, str(bad)
    )

    assert refused.returncode == 3
    assert "line 3: build_commands[0].halt_on_error" in refused.stderr
    assert "The project shop-eu made for it was deleted." in refused.stderr
    assert all(p["name"] != "Shop EU" for p in api.get("/projects/").json())
    good = tmp_path / "good.yml"
    good.write_text("build_commands:\n  - command: make\n")
    made = slipway(
        served, "import", "--new", "Shop EU", "--repository", project["repo"].url, str(good)
    )
    assert made.returncode == 0, made.stderr
    assert "Created the project shop-eu." in made.stderr
