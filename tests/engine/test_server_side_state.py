"""What lives on the server beside the build: shared/ seeded once from the repository,
files the deployment's own commands write (not drift), and private config files."""

from __future__ import annotations

import dataclasses
import grp
import pwd
import shutil
import stat
from pathlib import Path

import pytest

from builds.engine import pipeline
from builds.engine.errors import InvalidInput
from builds.engine.specs import CommandSpec, ConfigFileSpec
from tests.support.engine import RecordingReporter, after, deploy_spec, server_for

DJANGO_LIKE = {
    "manage.py": "import sys\nprint('manage', sys.argv)\n",
    "shop/__init__.py": "",
    "shop/settings.py": "DEBUG = False\nSTATIC_ROOT = 'staticfiles'\n",
    "shop/views.py": "def index(request):\n    return 'hello'\n",
    "vendor/django/__init__.py": "VERSION = (5, 0)\n",
    "vendor/django/contrib/staticfiles/__init__.py": "",
    "vendor/django/contrib/staticfiles/finders.py": "def find(path):\n    return path\n",
    "staticfiles/old.css": "body {}\n",
}


def _deploy(repo, tmp_path, server, revision, deployment_id, reporter=None, **overrides):
    reporter = reporter or RecordingReporter()
    result = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server], revision, deployment_id=deployment_id, **overrides),
        reporter,
    )
    assert result.ok, [r.error for r in result.servers]
    return result, after(result, server), reporter


def _live(target) -> Path:
    return (target.deploy_path / "current").resolve()


def _write_on_the_server(target, path: Path, text: str) -> None:
    """Write as the login user would (this test runs as root): folders and file are its own."""
    missing = [parent for parent in path.parents if not parent.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    for made in [path, *missing]:
        shutil.chown(made, target.username, pwd.getpwnam(target.username).pw_gid)


# --------------------------------------------------------------------------- shared paths


def test_the_first_deploy_seeds_shared_paths_from_the_repository_even_when_they_are_not_uploaded(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit(
        {
            "index.php": "A\n",
            "storage/seed.txt": "seed from git\n",
            "storage/cache/.gitkeep": "",
            "config/app.ini": "[app]\nname = shop\n",
        },
        "A",
    )
    server = server_for(sshd_target)
    shared = ("storage/", "config/app.ini", "uploads/")
    # As the runner builds it: Slipway writes the shared paths itself, so they are not uploaded.
    build = {"managed_paths": shared}
    _, server, reporter = _deploy(repo, tmp_path, server, a, 1, shared_paths=shared, build=build)
    home = sshd_target.deploy_path / "shared"
    assert (home / "storage" / "seed.txt").read_text() == "seed from git\n"
    assert (home / "storage" / "cache" / ".gitkeep").exists()
    assert (home / "config" / "app.ini").read_text() == "[app]\nname = shop\n"
    assert (home / "uploads").is_dir() and not any((home / "uploads").iterdir())
    assert (_live(sshd_target) / "config" / "app.ini").read_text() == "[app]\nname = shop\n"
    assert "Seeding shared/storage from the build: 2 paths, 14 bytes" in reporter.text
    assert "Seeding shared/uploads" not in reporter.text

    # What is in shared/ is the server's from now on: never overwritten, never sent again.
    (home / "storage" / "seed.txt").write_text("changed by the application\n")
    (home / "config" / "app.ini").write_text("[app]\nname = live\n")
    b = repo.commit(
        {"index.php": "B\n", "storage/seed.txt": "new seed\n", "config/app.ini": "new\n"}, "B"
    )
    second, server, reporter = _deploy(
        repo, tmp_path, server, b, 2, shared_paths=shared, build=build
    )
    assert (home / "storage" / "seed.txt").read_text() == "changed by the application\n"
    assert (home / "config" / "app.ini").read_text() == "[app]\nname = live\n"
    assert "Seeding" not in reporter.text
    assert second.servers[0].changes is not None
    assert second.servers[0].changes.paths_to_send == ["index.php"]


def test_a_shared_path_added_to_an_existing_project_is_seeded_from_the_release(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit({"index.php": "A\n", "storage/seed.txt": "seed\n", ".env": "KEY=1\n"}, "A")
    server = server_for(sshd_target)
    _, server, _ = _deploy(repo, tmp_path, server, a, 1)
    shared = ("storage/", ".env")
    _, server, reporter = _deploy(
        repo, tmp_path, server, a, 2, shared_paths=shared, build={"managed_paths": shared}
    )
    home = sshd_target.deploy_path / "shared"
    assert (home / "storage" / "seed.txt").read_text() == "seed\n"
    assert (home / ".env").read_text() == "KEY=1\n"
    live = _live(sshd_target)
    assert (live / "storage").is_symlink() and (live / ".env").is_symlink()
    assert (live / ".env").read_text() == "KEY=1\n"
    assert "Seeding shared/.env from the build: 1 paths, 6 bytes" in reporter.text


# --------------------------------------------------------------------------- drift


def _django_spec(**overrides):
    commands = (
        CommandSpec(
            command="python3 -m compileall -q . && mkdir -p var/cache && date +%s%N > var/cache/stamp",
            stage="after_switch",
        ),
    )
    return {"commands": commands, **overrides}


def test_what_the_deployments_own_commands_write_is_not_drift_but_a_change_by_hand_is(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit(DJANGO_LIKE, "A")
    server = server_for(sshd_target)
    _, server, _ = _deploy(repo, tmp_path, server, a, 1, **_django_spec())
    live = _live(sshd_target)
    assert list((live / "shop" / "__pycache__").glob("views.*.pyc"))
    assert (live / "var" / "cache" / "stamp").exists()

    # The same commit again: nothing to send, nothing "changed on the server".
    second, server, reporter = _deploy(repo, tmp_path, server, a, 2, **_django_spec())
    changes = second.servers[0].changes
    assert changes is not None and changes.is_empty, changes
    assert "changed on the server" not in reporter.text
    assert "0 files added, 0 modified, 0 deleted; 0 bytes to send" in reporter.text
    live = _live(sshd_target)
    assert list((live / "shop" / "__pycache__").glob("views.*.pyc")), "bytecode is kept"

    # A person edits one file on the server: that one, and only that one, is restored.
    (live / "shop" / "views.py").write_text("def index(request):\n    return 'hacked'\n")
    third, server, reporter = _deploy(repo, tmp_path, server, a, 3, **_django_spec())
    changes = third.servers[0].changes
    assert changes is not None
    assert (changes.added, changes.modified, changes.deleted) == ([], ["shop/views.py"], [])
    assert "1 paths were changed on the server" in reporter.text
    assert "shop/views.py" in reporter.text
    assert "return 'hello'" in (_live(sshd_target) / "shop" / "views.py").read_text()


def test_what_a_rollbacks_own_commands_write_is_not_drift_either(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit(DJANGO_LIKE, "A")
    b = repo.commit({"shop/views.py": "def index(request):\n    return 'B'\n"}, "B")
    server = server_for(sshd_target)
    first, server_a, _ = _deploy(repo, tmp_path, server, a, 1, **_django_spec())
    _, server_b, _ = _deploy(repo, tmp_path, server_a, b, 2, **_django_spec())
    back = pipeline.rollback(
        pipeline.RollbackSpec(
            deployment_id=3,
            project="Shop",
            servers=(server_b,),
            targets={server.id: first.servers[0].release or ""},
            commands=_django_spec()["commands"],
        ),
        RecordingReporter(),
    )
    assert back[0].ok, back[0].error
    # The rollback's command rewrote var/cache/stamp in release A: the next deploy, from A
    # live, must not report it as changed on the server nor delete it.
    _, _, reporter = _deploy(repo, tmp_path, server_a, b, 4, **_django_spec())
    assert "changed on the server" not in reporter.text


def test_a_release_without_commands_is_recorded_as_written_and_leaves_no_listing_behind(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit(DJANGO_LIKE, "A")
    b = repo.commit({"shop/views.py": "def index(request):\n    return 'B'\n"}, "B")
    server = server_for(sshd_target)
    _, server, _ = _deploy(repo, tmp_path, server, a, 1)
    second, server, reporter = _deploy(repo, tmp_path, server, b, 2)
    assert "(full upload)" not in reporter.text, "the live release was copied"
    name = second.servers[0].release
    meta = sshd_target.deploy_path / ".slipway"
    manifests = meta / "manifests"
    # Nothing ran in the release after Slipway wrote it: the listing it leaves is the one it
    # wrote, and nothing counts as rewritten by the deployment's commands.
    written = (manifests / f"{name}.written").read_text()
    assert "shop/views.py\t" in written
    assert (manifests / f"{name}.stat").read_text() == written
    assert (manifests / f"{name}.rewritten").read_text() == ""
    assert sorted(p.name for p in meta.iterdir()) == ["manifests"], "no listing left behind"

    # A person's change is still told apart from what the deployment wrote.
    _write_on_the_server(sshd_target, _live(sshd_target) / "manage.py", "print('by hand')\n")
    third, _, reporter = _deploy(repo, tmp_path, server, b, 3)
    assert third.servers[0].changes is not None
    assert third.servers[0].changes.modified == ["manage.py"]
    assert "1 paths were changed on the server" in reporter.text


def test_a_build_file_a_command_rewrites_starts_from_the_build_again_each_deploy(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit({"app.cfg": "base\n"}, "A")
    server = server_for(sshd_target)
    commands = (CommandSpec(command="echo appended >> app.cfg", stage="before_switch"),)
    _, server, _ = _deploy(repo, tmp_path, server, a, 1, commands=commands)
    second, server, reporter = _deploy(repo, tmp_path, server, a, 2, commands=commands)
    assert (_live(sshd_target) / "app.cfg").read_text() == "base\nappended\n"
    assert second.servers[0].changes is not None
    assert second.servers[0].changes.modified == ["app.cfg"]
    assert "changed on the server" not in reporter.text


def test_generated_paths_are_neither_uploaded_restored_nor_deleted(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit({**DJANGO_LIKE, "media/thumbs/committed.png": "png\n"}, "A")
    server = server_for(sshd_target)
    build = {"generated_paths": ("staticfiles/", "/media/thumbs/")}
    _, server, _ = _deploy(repo, tmp_path, server, a, 1, build=build)
    live = _live(sshd_target)
    assert not (live / "staticfiles").exists(), "generated paths are not uploaded"
    assert not (live / "media" / "thumbs").exists()

    # The application writes generated output while the release is live.
    _write_on_the_server(sshd_target, live / "staticfiles" / "app.css", "collected\n")
    _write_on_the_server(sshd_target, live / "media" / "thumbs" / "1.png", "thumb\n")
    second, server, reporter = _deploy(repo, tmp_path, server, a, 2, build=build)
    live = _live(sshd_target)
    assert (live / "staticfiles" / "app.css").read_text() == "collected\n"
    assert (live / "media" / "thumbs" / "1.png").read_text() == "thumb\n"
    assert "changed on the server" not in reporter.text
    assert second.servers[0].changes is not None and second.servers[0].changes.is_empty

    # Without the declaration, output written after a deployment finished is drift: removed.
    _write_on_the_server(sshd_target, live / "staticfiles" / "more.css", "collected later\n")
    _, server, reporter = _deploy(repo, tmp_path, server, a, 3)
    assert "1 paths were changed on the server" in reporter.text
    assert (_live(sshd_target) / "staticfiles" / "old.css").exists(), "uploaded again"
    assert not (_live(sshd_target) / "staticfiles" / "more.css").exists()

    # Declared again later: what the previous build uploaded there is not deleted either.
    preview = pipeline.preview(
        deploy_spec(repo, tmp_path, [server], a, build=build), RecordingReporter()
    )
    assert preview.changes[server.id].is_empty
    fourth, server, _ = _deploy(repo, tmp_path, server, a, 4, build=build)
    assert fourth.servers[0].changes is not None and fourth.servers[0].changes.is_empty
    assert (_live(sshd_target) / "staticfiles" / "old.css").exists()


# --------------------------------------------------------------------------- secrets, excludes


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_config_files_are_private_unless_asked_otherwise(sshd_target, git_repo_factory, tmp_path):
    repo = git_repo_factory()
    a = repo.commit({"index.php": "A\n"}, "A")
    # The login user's own group: one that chgrp allows it to give.
    own_group = grp.getgrgid(pwd.getpwnam(sshd_target.username).pw_gid).gr_name
    files = (
        ConfigFileSpec(path=".env", body="SECRET_KEY=s3cret\n"),
        ConfigFileSpec(path="config/app.ini", body="[app]\n", group=own_group),
        ConfigFileSpec(path="public/robots.txt", body="User-agent: *\n", mode="644"),
    )
    server = server_for(sshd_target, file_mode="644")
    _deploy(repo, tmp_path, server, a, 1, config_files=files)
    live = _live(sshd_target)
    assert _mode(live / ".env") == 0o600
    assert _mode(live / "config" / "app.ini") == 0o640
    assert grp.getgrgid((live / "config" / "app.ini").stat().st_gid).gr_name == own_group
    assert _mode(live / "public" / "robots.txt") == 0o644
    assert _mode(live / "index.php") == 0o644


def test_the_build_log_says_what_each_exclude_pattern_removed(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit({**DJANGO_LIKE, ".deployignore": "*.md\n", "README.md": "read me\n"}, "A")
    server = server_for(sshd_target)
    _, _, reporter = _deploy(
        repo, tmp_path, server, a, 1, build={"excluded": ("staticfiles/", "*.log")}
    )
    assert (
        '"staticfiles/" (excluded files) removed 2 paths: staticfiles/, '
        "vendor/django/contrib/staticfiles/"
    ) in reporter.text
    assert '"*.md" (.deployignore) removed 1 path: README.md' in reporter.text
    assert '"*.log"' not in reporter.text, "a pattern that removed nothing is not listed"

    preview = pipeline.preview(
        dataclasses.replace(
            deploy_spec(repo, tmp_path, [server], a, build={"excluded": ("staticfiles/",)}),
        ),
        RecordingReporter(),
    )
    (excluded,) = [e for e in preview.exclusions.rules if e.pattern == "staticfiles/"]
    assert excluded.count == 2
    assert excluded.examples == ["staticfiles/", "vendor/django/contrib/staticfiles/"]


def test_a_config_files_mode_and_group_are_checked_by_name(tmp_path):
    with pytest.raises(InvalidInput) as bad_mode:
        ConfigFileSpec(path=".env", body="", mode="rw-r--r--")
    assert bad_mode.value.field == "mode"
    with pytest.raises(InvalidInput) as bad_group:
        ConfigFileSpec(path=".env", body="", group="www data; rm -rf /")
    assert bad_group.value.field == "group"
    assert ConfigFileSpec(path=".env", body="", group="33").file_mode == "640"
    assert ConfigFileSpec(path=".env", body="", group="www-data", mode="0660").file_mode == "0660"


def test_in_place_over_sftp_config_files_are_private_and_generated_paths_stay(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit({"index.php": "A\n", "cache/warm.txt": "from the repository\n"}, "A")
    server = server_for(sshd_target, atomic=False, shell=False)
    files = (ConfigFileSpec(path=".env", body="SECRET_KEY=s3cret\n"),)
    _, server, _ = _deploy(repo, tmp_path, server, a, 1, config_files=files)
    root = sshd_target.deploy_path
    assert _mode(root / ".env") == 0o600
    second, server, _ = _deploy(
        repo, tmp_path, server, a, 2, config_files=files, build={"generated_paths": ("cache/",)}
    )
    assert second.servers[0].changes is not None and second.servers[0].changes.deleted == []
    assert (root / "cache" / "warm.txt").read_text() == "from the repository\n"
