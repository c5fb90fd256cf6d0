"""Everything Git can hold reaches the server byte-exact: file names of any bytes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from builds.engine import pipeline
from builds.engine.build import checked_out
from builds.engine.git import Mirror
from builds.engine.manifest import Manifest, display_path
from builds.engine.workspace import Workspace
from tests.support.engine import RecordingReporter, after, deploy_spec, server_for

LATIN_1 = b"caf\xe9.txt"
# Names a repository can hold that are not plain words: not UTF-8, Unicode, shell and
# tar metacharacters, a leading dash, spaces at either end.
ODD_NAMES = [
    LATIN_1,
    "naïve ünïcode.txt".encode(),
    b"back\\slash.txt",
    b"-leading-dash.txt",
    b" leading space.txt",
    b"trailing space.txt ",
    b'quote\'s "and" $(dollar) `tick`.txt',
    b"dir \xff/inner\xfe.txt",
]
# Control characters in names: the server's listing cannot hold them, so a release holding
# them is sent whole; still byte-exact.
CONTROL_NAMES = [b"line\nbreak.txt", b"tab\there.txt"]


def _files(names: list[bytes], suffix: bytes = b"") -> dict[str, bytes]:
    return {os.fsdecode(name): name + suffix + b"\n" for name in names}


def _read(root: Path, name: bytes) -> bytes:
    with open(os.path.join(os.fsencode(root), name), "rb") as deployed:
        return deployed.read()


def test_it_deploys_file_names_of_any_bytes_byte_exact_and_again_incrementally(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit(_files(ODD_NAMES), "Odd names")
    server = server_for(sshd_target)
    first = pipeline.deploy(deploy_spec(repo, tmp_path, [server], a), RecordingReporter())
    assert first.ok, first.servers[0].error
    current = sshd_target.deploy_path / "current"
    for name in ODD_NAMES:
        assert _read(current, name) == name + b"\n"
    server = after(first, server)
    # Someone edits the Latin-1 file on the server: drift, restored by the next deployment.
    with open(os.path.join(os.fsencode(current.resolve()), LATIN_1), "wb") as edited:
        edited.write(b"edited by hand\n")

    changed = _files([b"-leading-dash.txt"], b" v2")
    b = repo.commit({**changed, os.fsdecode(b"dir \xff/inner\xfe.txt"): None}, "Change")
    reporter = RecordingReporter()
    second = pipeline.deploy(deploy_spec(repo, tmp_path, [server], b, deployment_id=2), reporter)

    assert second.ok, second.servers[0].error
    assert "(full upload)" not in reporter.text
    assert "1 paths were changed on the server" in reporter.text
    current = sshd_target.deploy_path / "current"
    assert _read(current, LATIN_1) == LATIN_1 + b"\n"
    assert _read(current, b"-leading-dash.txt") == b"-leading-dash.txt v2\n"
    assert not os.path.lexists(os.path.join(os.fsencode(current), b"dir \xff"))
    changes = second.servers[0].changes
    assert changes is not None
    assert sorted(changes.modified) == sorted(
        os.fsdecode(n) for n in [LATIN_1, b"-leading-dash.txt"]
    )


def test_it_deploys_names_with_control_characters_in_a_full_upload(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit(_files([*CONTROL_NAMES, LATIN_1]), "Control characters")
    server = server_for(sshd_target)
    first = pipeline.deploy(deploy_spec(repo, tmp_path, [server], a), RecordingReporter())
    assert first.ok, first.servers[0].error
    b = repo.commit(_files([b"tab\there.txt"], b" v2"), "Again")
    second = pipeline.deploy(
        deploy_spec(repo, tmp_path, [after(first, server)], b, deployment_id=2),
        RecordingReporter(),
    )
    assert second.ok, second.servers[0].error
    current = sshd_target.deploy_path / "current"
    assert _read(current, b"line\nbreak.txt") == b"line\nbreak.txt\n"
    assert _read(current, b"tab\there.txt") == b"tab\there.txt v2\n"
    assert _read(current, LATIN_1) == LATIN_1 + b"\n"


def test_it_deploys_odd_names_in_place_over_sftp(sshd_target, git_repo_factory, tmp_path):
    repo = git_repo_factory()
    a = repo.commit(_files([*ODD_NAMES, *CONTROL_NAMES]), "Odd names")
    server = server_for(sshd_target, atomic=False, shell=False)
    first = pipeline.deploy(deploy_spec(repo, tmp_path, [server], a), RecordingReporter())
    assert first.ok, first.servers[0].error
    b = repo.commit({os.fsdecode(LATIN_1): None, **_files([b"line\nbreak.txt"], b" v2")})
    second = pipeline.deploy(
        deploy_spec(repo, tmp_path, [after(first, server)], b, deployment_id=2),
        RecordingReporter(),
    )
    assert second.ok, second.servers[0].error
    root = sshd_target.deploy_path
    assert not os.path.lexists(os.path.join(os.fsencode(root), LATIN_1))
    assert _read(root, b"line\nbreak.txt") == b"line\nbreak.txt v2\n"
    assert _read(root, b"dir \xff/inner\xfe.txt") == b"dir \xff/inner\xfe.txt\n"


def test_an_export_beside_a_busy_workspace_keeps_odd_names(git_repo_factory, tmp_path):
    repo = git_repo_factory()
    sha = repo.commit(_files([*ODD_NAMES, *CONTROL_NAMES]), "Odd names")
    spec = deploy_spec(repo, tmp_path, [], sha).build
    mirror = Mirror(spec.mirror_dir, repo.url, allow_local=True)
    mirror.fetch()
    workspace = Workspace(spec.workspace_dir, mirror)
    with workspace.try_lock(), checked_out(spec, mirror, sha, lambda *_: None) as tree:
        assert tree.hash_cache is None, "the workspace is busy: an export"
        for name in ODD_NAMES + CONTROL_NAMES:
            assert _read(tree.root, name) == name + b"\n"


def test_a_manifest_with_names_that_are_not_utf8_is_valid_unicode_json(tmp_path):
    for name in ODD_NAMES + CONTROL_NAMES:
        path = os.path.join(os.fsencode(tmp_path), name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as created:
            created.write(b"x")
    manifest = Manifest.build(tmp_path)
    text = manifest.to_json().decode("ascii")

    assert "\\udc" not in text, "no lone surrogate, which PostgreSQL's jsonb refuses"
    document = json.loads(text)
    assert {"b64": "Y2Fm6S50eHQ="} in [row[0] for row in document["entries"]]
    assert Manifest.from_json(text.encode()) == manifest


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        (LATIN_1, "caf\\xe9.txt"),
        ("naïve.txt".encode(), "naïve.txt"),
        (b"line\nbreak", "line\\nbreak"),
        (b"bell\x07", "bell\\x07"),
        (b"back\\slash", "back\\slash"),
    ],
)
def test_it_shows_any_file_name_as_text(name: bytes, shown: str) -> None:
    assert display_path(os.fsdecode(name)) == shown
