"""The bench's baselines do what a user's deploy script does (bench/fixtures.py), against a
real sshd: the honest comparison depends on it. Behaviour only; no timings."""

from __future__ import annotations

import os
import shutil

from bench.fixtures import (
    Keys,
    WorkTree,
    baselines_for,
    change_repository,
    export,
    head,
    last_change,
    make_repository,
)


def test_it_updates_the_work_tree_in_place_keeping_unchanged_files_mtimes(tmp_path):
    repository = tmp_path / "repository"
    make_repository(repository, text_files=60)
    work_tree = WorkTree(repository, tmp_path / "work-tree")
    work_tree.checkout(head(repository))
    before = {p: p.stat().st_mtime_ns for p in work_tree.path.glob("src/*/*/*.txt")}
    for path in before:
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))

    change_repository(repository, 1)
    work_tree.checkout(head(repository))

    after = {p: p.stat().st_mtime_ns for p in work_tree.path.glob("src/*/*/*.txt")}
    kept = [p for p in after if after[p] == 1_000_000_000]
    assert len(kept) == 60 - 15  # 10 modified and 5 deleted of 60
    assert len(list(work_tree.path.glob("src/added-1-*.txt"))) == 5


def test_a_fresh_export_gives_every_file_the_commits_time(tmp_path):
    repository = tmp_path / "repository"
    make_repository(repository, text_files=20)
    export(repository, tmp_path / "export")
    mtimes = {p.stat().st_mtime for p in (tmp_path / "export").rglob("*.txt")}
    assert len(mtimes) == 1
    assert not (tmp_path / "export" / ".git").exists()


def _owned(target, tool):
    folder = target.root / tool
    folder.mkdir()
    shutil.chown(folder, target.username)
    return folder


def test_rsync_from_the_work_tree_hard_links_unchanged_files_and_switches(
    tmp_path, sshd_target, ssh_client_key_pair, ssh_host_key_pair
):
    repository = tmp_path / "repository"
    make_repository(repository, text_files=40)
    work_tree = WorkTree(repository, tmp_path / "work-tree")
    work_tree.checkout(head(repository))
    root = _owned(sshd_target, "rsync-tree")
    keys = Keys(host=ssh_host_key_pair, client=ssh_client_key_pair)
    (baseline,) = baselines_for([sshd_target], keys, tmp_path / "known_hosts")

    baseline.rsync("rsync-tree", work_tree.path, "a", None)
    change_repository(repository, 2)
    work_tree.checkout(head(repository))
    baseline.rsync("rsync-tree", work_tree.path, "b", "a")

    first, second = root / "releases" / "a", root / "releases" / "b"
    assert os.readlink(root / "current") == "releases/b"
    assert not (second / ".git").exists()
    names = sorted(p.relative_to(second) for p in second.rglob("*.txt"))
    expected = sorted(
        p.relative_to(work_tree.path)
        for p in work_tree.path.rglob("*.txt")
        if ".git" not in p.parts
    )
    assert names == expected
    linked = [n for n in names if (first / n).exists() and (first / n).samefile(second / n)]
    assert len(linked) == 40 - 15


def test_tar_over_ssh_and_the_bare_switch_leave_current_on_the_chosen_release(
    tmp_path, sshd_target, ssh_client_key_pair, ssh_host_key_pair
):
    repository = tmp_path / "repository"
    make_repository(repository, text_files=10)
    work_tree = WorkTree(repository, tmp_path / "work-tree")
    work_tree.checkout(head(repository))
    _owned(sshd_target, "tar")
    keys = Keys(host=ssh_host_key_pair, client=ssh_client_key_pair)
    (baseline,) = baselines_for([sshd_target], keys, tmp_path / "known_hosts")

    baseline.tar(work_tree.path, "a")
    baseline.tar(work_tree.path, "b")
    baseline.switch("tar", "a")

    root = sshd_target.root / "tar"
    assert os.readlink(root / "current") == "releases/a"
    assert len(list((root / "releases" / "b").rglob("*.txt"))) == 10
    assert not (root / "releases" / "b" / ".git").exists()


def test_the_hard_linked_floor_links_unchanged_files_and_unpacks_only_the_change(
    tmp_path, sshd_target, ssh_client_key_pair, ssh_host_key_pair
):
    repository = tmp_path / "repository"
    make_repository(repository, text_files=40)
    work_tree = WorkTree(repository, tmp_path / "work-tree")
    work_tree.checkout(head(repository))
    root = _owned(sshd_target, "linked")
    keys = Keys(host=ssh_host_key_pair, client=ssh_client_key_pair)
    (baseline,) = baselines_for([sshd_target], keys, tmp_path / "known_hosts")

    baseline.seed_linked(work_tree.path, "a")
    change_repository(repository, 3)
    work_tree.checkout(head(repository))
    changed, deleted = last_change(repository)
    baseline.linked(work_tree.path, "b", "a", changed, deleted)

    first, second = root / "releases" / "a", root / "releases" / "b"
    assert (len(changed), len(deleted)) == (15, 5)
    assert os.readlink(root / "current") == "releases/b"
    for path in changed:
        assert (second / path).read_bytes() == (work_tree.path / path).read_bytes()
        assert not ((first / path).exists() and (first / path).samefile(second / path))
    assert not any((second / path).exists() for path in deleted)
    assert all((first / path).exists() for path in deleted)
    names = sorted(p.relative_to(second) for p in second.rglob("*.txt"))
    linked = [n for n in names if (first / n).exists() and (first / n).samefile(second / n)]
    assert len(linked) == 40 - 15
