"""The engine reads .slipway.yml at a revision from the bare mirror, without a checkout: the
file of that revision (not the branch head's), nothing when there is none, and a refusal
for a symbolic link, a folder or a file over the limit. A real Git repository."""

from __future__ import annotations

import pytest

from builds.engine.errors import InvalidInput
from builds.engine.git import Mirror


@pytest.fixture
def repo(git_repo_factory):
    return git_repo_factory()


def _mirror(tmp_path, repo) -> Mirror:
    mirror = Mirror(tmp_path / "mirror.git", repo.url, allow_local=True)
    mirror.fetch()
    return mirror


def test_it_reads_the_file_of_the_revision_asked_for(tmp_path, repo):
    first = repo.commit({".slipway.yml": "shared_paths: [storage/]\n"}, "First")
    second = repo.commit({".slipway.yml": "shared_paths: [var/]\n"}, "Second")
    none = repo.commit({".slipway.yml": None}, "Third")
    mirror = _mirror(tmp_path, repo)

    assert mirror.read_file(first, ".slipway.yml", max_bytes=1000) == b"shared_paths: [storage/]\n"
    assert mirror.read_file(second, ".slipway.yml", max_bytes=1000) == b"shared_paths: [var/]\n"
    assert mirror.read_file(none, ".slipway.yml", max_bytes=1000) is None


def test_it_refuses_a_link(tmp_path, repo):
    linked = repo.commit(
        {"settings.yml": "a: 1\n"}, "Link", symlinks={".slipway.yml": "settings.yml"}
    )

    with pytest.raises(InvalidInput, match="is a symbolic link"):
        _mirror(tmp_path, repo).read_file(linked, ".slipway.yml", max_bytes=1000)


def test_it_refuses_a_folder(tmp_path, repo):
    folder = repo.commit({".slipway.yml/inside": "x\n"}, "Folder")

    with pytest.raises(InvalidInput, match="is a folder"):
        _mirror(tmp_path, repo).read_file(folder, ".slipway.yml", max_bytes=1000)


def test_it_refuses_a_file_over_the_limit(tmp_path, repo):
    big = repo.commit({".slipway.yml": "#" * 2000 + "\n"}, "Big")

    with pytest.raises(InvalidInput, match=r"is 2001 bytes .*the most read is 1000"):
        _mirror(tmp_path, repo).read_file(big, ".slipway.yml", max_bytes=1000)
