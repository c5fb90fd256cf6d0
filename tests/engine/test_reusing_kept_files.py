"""A file whose content a release kept on the server already holds is copied there, not sent.

Real sshd targets and Git repositories. "Sent" is what the engine reports (the server's
upload progress and the change set's ``bytes_to_send``): the bench counts the same figure.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from builds.engine import pipeline
from builds.engine.manifest import (
    DeferredManifests,
    Entry,
    Manifest,
    ReuseSource,
    reuse_sources,
)
from tests.support.engine import RecordingReporter, after, deploy_spec, server_for, tree_digest

BIG = "".join(f"line {n} of a file worth not sending twice\n" for n in range(2000))


def _expected_tree(repo, sha: str, tmp_path: Path) -> dict[str, str]:
    export = tmp_path / f"expected-{sha[:7]}"
    export.mkdir()
    repo.git("--work-tree", str(export), "checkout", sha, "--", ".")
    repo.git("reset", "--quiet")
    return tree_digest(export)


def _live(target) -> Path:
    return (target.deploy_path / "current").resolve()


def _bytes_sent(reporter: RecordingReporter) -> int:
    """The content bytes the upload announced for the server (its last progress report)."""
    return reporter.progress_reports[-1][4]


def _deploy(repo, tmp_path, server, sha, number, reporter=None):
    reporter = reporter or RecordingReporter()
    result = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server], sha, deployment_id=number), reporter
    )
    assert result.ok, result.servers[0].error
    return result, reporter


def _rollback(server, name: str, number: int) -> None:
    back = pipeline.rollback(
        pipeline.RollbackSpec(
            deployment_id=number, project="Shop", servers=(server,), targets={server.id: name}
        ),
        RecordingReporter(),
    )
    assert back[0].ok, back[0].error


def _repo_ab(git_repo_factory):
    repo = git_repo_factory()
    a = repo.commit(
        {"index.php": "<?php echo 'A';\n", "lib/big.txt": BIG, "bin/run": "#!/bin/sh\n"},
        "A",
        executable=["bin/run"],
    )
    b = repo.commit(
        {
            "index.php": "<?php echo 'B';\n",
            "lib/big.txt": BIG + "one more line in B\n",
            "new/deep/added.txt": "added in B\n" * 50,
            "bin/run": "#!/bin/sh\necho B\n",
        },
        "B",
        executable=["bin/run"],
    )
    return repo, a, b


def test_it_rolls_forward_after_a_rollback_without_sending_any_file_content(
    sshd_target, git_repo_factory, tmp_path
):
    repo, a, b = _repo_ab(git_repo_factory)
    server = server_for(sshd_target)
    first, _ = _deploy(repo, tmp_path, server, a, 1)
    server = after(first, server)
    second, reporter = _deploy(repo, tmp_path, server, b, 2)
    assert _bytes_sent(reporter) > 0
    release_a, release_b = first.servers[0], second.servers[0]
    b_snapshot = tree_digest(_live(sshd_target))
    server = after(second, server)
    _rollback(server, release_a.release or "", 3)

    # As the database holds it after the rollback: A live, B kept.
    server = dataclasses.replace(
        server,
        live_release=release_a.release,
        live_revision=a,
        live_manifest=release_a.manifest,
        kept_manifests={release_b.release or "": release_b.manifest},
    )
    again, reporter = _deploy(repo, tmp_path, server, b, 4)

    changes = again.servers[0].changes
    assert changes is not None
    assert _bytes_sent(reporter) == 0
    assert changes.bytes_to_send == 0
    assert set(changes.reused) == {"index.php", "lib/big.txt", "new/deep/added.txt", "bin/run"}
    assert "0 bytes to send" in reporter.text
    live = _live(sshd_target)
    assert live.name == again.servers[0].release
    assert tree_digest(live) == _expected_tree(repo, b, tmp_path) == b_snapshot
    # The copies are files of their own: writing one leaves the kept release alone.
    with (live / "lib" / "big.txt").open("a") as copy:
        copy.write("written by the application\n")
    assert tree_digest(sshd_target.deploy_path / "releases" / release_b.release) == b_snapshot


def test_it_deploys_a_revert_commit_from_the_release_that_held_those_files(
    sshd_target, git_repo_factory, tmp_path
):
    repo, a, b = _repo_ab(git_repo_factory)
    repo.git("revert", "--no-edit", b)
    reverted = repo.head()
    server = server_for(sshd_target)
    first, _ = _deploy(repo, tmp_path, server, a, 1)
    server = after(first, server)
    second, _ = _deploy(repo, tmp_path, server, b, 2)
    server = dataclasses.replace(
        after(second, server), kept_manifests={first.servers[0].release: first.servers[0].manifest}
    )

    third, reporter = _deploy(repo, tmp_path, server, reverted, 3)

    changes = third.servers[0].changes
    assert changes is not None
    assert changes.files().deleted == ["new/deep/added.txt"]
    assert _bytes_sent(reporter) == 0
    assert set(changes.reused) == {"index.php", "lib/big.txt", "bin/run"}
    assert tree_digest(_live(sshd_target)) == _expected_tree(repo, reverted, tmp_path)
    assert os.access(_live(sshd_target) / "bin" / "run", os.X_OK)


def test_it_copies_a_moved_file_on_the_server(sshd_target, git_repo_factory, tmp_path):
    repo = git_repo_factory()
    a = repo.commit({"lib/big.txt": BIG, "index.php": "A\n"}, "A")
    b = repo.commit({"lib/big.txt": None, "vendor/moved/big.txt": BIG}, "Move it")
    server = server_for(sshd_target)
    first, _ = _deploy(repo, tmp_path, server, a, 1)

    second, reporter = _deploy(repo, tmp_path, after(first, server), b, 2)

    changes = second.servers[0].changes
    assert changes is not None
    assert changes.added == ["vendor/moved/big.txt"]
    assert changes.reused == ("vendor/moved/big.txt",)
    assert changes.bytes_reused == len(BIG)
    assert _bytes_sent(reporter) == 0
    assert tree_digest(_live(sshd_target)) == _expected_tree(repo, b, tmp_path)


def test_it_never_copies_from_a_release_that_is_gone_from_the_server(
    sshd_target, git_repo_factory, tmp_path
):
    repo, a, b = _repo_ab(git_repo_factory)
    server = server_for(sshd_target)
    first, _ = _deploy(repo, tmp_path, server, a, 1)
    server = after(first, server)
    second, _ = _deploy(repo, tmp_path, server, b, 2)
    release_b = second.servers[0]
    server = after(second, server)
    _rollback(server, first.servers[0].release or "", 3)
    # Removed (by keep_releases, or by hand) after the worker read what the server keeps.
    shutil.rmtree(sshd_target.deploy_path / "releases" / release_b.release)
    server = dataclasses.replace(
        server,
        live_release=first.servers[0].release,
        live_manifest=first.servers[0].manifest,
        kept_manifests={release_b.release: release_b.manifest},
    )

    again, reporter = _deploy(repo, tmp_path, server, b, 4)

    changes = again.servers[0].changes
    assert changes is not None
    assert changes.reused == ()
    assert _bytes_sent(reporter) == changes.bytes_to_send > len(BIG)
    assert tree_digest(_live(sshd_target)) == _expected_tree(repo, b, tmp_path)


def test_it_sends_what_was_changed_in_a_kept_release_behind_its_back(
    sshd_target, git_repo_factory, tmp_path
):
    repo, a, b = _repo_ab(git_repo_factory)
    server = server_for(sshd_target)
    first, _ = _deploy(repo, tmp_path, server, a, 1)
    server = after(first, server)
    second, _ = _deploy(repo, tmp_path, server, b, 2)
    release_b = second.servers[0]
    server = after(second, server)
    _rollback(server, first.servers[0].release or "", 3)
    kept = sshd_target.deploy_path / "releases" / release_b.release
    # Same size, other bytes: only a digest tells them apart.
    (kept / "index.php").write_text("<?php echo 'X';\n")
    # A link where a file was: never followed, never copied.
    (kept / "new" / "deep" / "added.txt").unlink()
    (kept / "new" / "deep" / "added.txt").symlink_to("/etc/hostname")
    server = dataclasses.replace(
        server,
        live_release=first.servers[0].release,
        live_manifest=first.servers[0].manifest,
        kept_manifests={release_b.release: release_b.manifest},
    )

    again, reporter = _deploy(repo, tmp_path, server, b, 4)

    changes = again.servers[0].changes
    assert changes is not None
    assert set(changes.reused) == {"lib/big.txt", "bin/run"}
    assert (
        _bytes_sent(reporter)
        == changes.bytes_to_send
        == len("<?php echo 'B';\n") + len("added in B\n" * 50)
    )
    assert "2 files kept on the server were changed or gone" in reporter.text
    assert tree_digest(_live(sshd_target)) == _expected_tree(repo, b, tmp_path)


def test_a_full_deployment_sends_everything(sshd_target, git_repo_factory, tmp_path):
    repo, a, _b = _repo_ab(git_repo_factory)
    server = server_for(sshd_target)
    first, _ = _deploy(repo, tmp_path, server, a, 1)
    server = after(first, server)
    reporter = RecordingReporter()
    result = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server], a, deployment_id=2, full=True), reporter
    )
    assert result.ok, result.servers[0].error
    changes = result.servers[0].changes
    assert changes is not None and changes.reused == ()
    assert _bytes_sent(reporter) > len(BIG)


def _entry(path: str, digest: str, size: int = 10, kind: str = "file") -> Entry:
    return Entry(path=path, kind=kind, size=size, mode=0o644, digest=digest)  # type: ignore[arg-type]


def test_it_prefers_the_same_path_and_skips_shared_paths_and_unlistable_names():
    new = Manifest(
        [
            _entry("app.js", "x"),
            _entry("moved/app.css", "y"),
            _entry("storage/upload.bin", "z"),
            _entry("odd\\name.txt", "w"),
            _entry("brand-new.txt", "n"),
            _entry("link", "x", kind="symlink"),
        ]
    )
    older = Manifest([_entry("other/app.js", "x"), _entry("app.css", "y"), _entry("odd", "w")])
    live = Manifest([_entry("app.js", "x"), _entry("storage/upload.bin", "z")])
    sources = reuse_sources(
        list(new),
        new,
        {"20260101-000000000-aaaaaaa": older, "20260102-000000000-bbbbbbb": live},
        skip=("storage/",),
    )
    assert sources == {
        "app.js": ReuseSource("20260102-000000000-bbbbbbb", "app.js"),
        "moved/app.css": ReuseSource("20260101-000000000-aaaaaaa", "app.css"),
    }


def test_a_same_digest_of_another_size_is_not_the_same_content():
    new = Manifest([_entry("a.txt", "x", size=11)])
    assert reuse_sources(["a.txt"], new, {"r": Manifest([_entry("a.txt", "x", size=10)])}) == {}


def test_it_reads_each_deferred_kept_manifest_once_and_skips_one_that_is_gone():
    new = Manifest([_entry("app.js", "x"), _entry("app.css", "y")])
    manifests = {
        "20260101-000000000-aaaaaaa": Manifest([_entry("old/app.js", "x")]),
        "20260102-000000000-bbbbbbb": Manifest([_entry("app.css", "y")]),
    }
    reads: list[str] = []

    def load(name: str) -> Manifest | None:
        reads.append(name)
        return manifests.get(name)

    kept = DeferredManifests([*manifests, "20260103-000000000-ccccccc"], load)
    assert reads == []  # nothing read until asked

    sources = reuse_sources(list(new), new, kept)

    assert sources == {
        "app.js": ReuseSource("20260101-000000000-aaaaaaa", "old/app.js"),
        "app.css": ReuseSource("20260102-000000000-bbbbbbb", "app.css"),
    }
    assert sorted(reads) == sorted([*manifests, "20260103-000000000-ccccccc"])
    assert "20260103-000000000-ccccccc" in kept
    assert kept.get("20260103-000000000-ccccccc") is None
