"""Manifests of a build, the change set between two of them, and the tar that carries it."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from pathlib import Path

import pytest

from builds.engine import manifest as manifest_module
from builds.engine.errors import InternalError
from builds.engine.excludes import ExcludeRules, load_deployignore
from builds.engine.git import Mirror
from builds.engine.manifest import (
    HASH_CACHE_FORMAT_VERSION,
    TAR_CHUNK_BYTES,
    ChangeSet,
    Entry,
    EntryKind,
    HashCache,
    Manifest,
    diff,
    tar_stream,
)
from tests.support.gitrepos import GitRepoFactory


def _write(root: Path, files: dict[str, str | bytes], *, executable: tuple[str, ...] = ()) -> None:
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        path.chmod(0o755 if relative in executable else 0o644)


@pytest.fixture
def build(tmp_path: Path) -> Path:
    root = tmp_path / "build"
    _write(
        root,
        {
            "index.php": "<?php echo 'hi';",
            "bin/console": "#!/usr/bin/env php\n",
            "public/logo.png": bytes(range(256)) * 10,
            "storage/logs/app.log": "noise",
            ".deployignore": "storage/logs/\n",
        },
        executable=("bin/console",),
    )
    (root / "current-env").symlink_to("../shared/.env")
    (root / "var" / "cache").mkdir(parents=True)
    return root


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- building


def test_it_records_files_symlinks_and_empty_folders(build: Path) -> None:
    manifest = Manifest.build(build, ExcludeRules.from_lines(["storage/logs/"]))

    assert sorted(manifest) == [
        "bin/console",
        "current-env",
        "index.php",
        "public/logo.png",
        "storage",
        "var/cache",
    ]
    assert manifest["bin/console"] == Entry(
        path="bin/console",
        kind="file",
        size=len("#!/usr/bin/env php\n"),
        mode=0o755,
        digest=_sha256(b"#!/usr/bin/env php\n"),
    )
    assert manifest["index.php"].mode == 0o644
    assert manifest["current-env"].kind == "symlink"
    assert manifest["current-env"].digest == _sha256(b"../shared/.env")
    assert manifest["var/cache"].kind == "dir"
    # "storage" only held excluded logs: it stays, as an empty folder.
    assert manifest["storage"].kind == "dir"
    assert manifest.total_bytes == sum(
        entry.size for entry in manifest.values() if entry.kind == "file"
    )


def test_it_never_follows_a_symlink_to_a_folder(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _write(outside, {"secret.txt": "do not deploy"})
    root = tmp_path / "build"
    _write(root, {"app.txt": "app"})
    (root / "uploads").symlink_to(outside)

    manifest = Manifest.build(root)

    assert sorted(manifest) == ["app.txt", "uploads"]
    assert manifest["uploads"].kind == "symlink"


def test_it_keeps_everything_without_rules(build: Path) -> None:
    manifest = Manifest.build(build)

    assert "storage/logs/app.log" in manifest
    assert ".deployignore" in manifest


def test_it_leaves_out_the_deployignore_whenever_rules_apply(build: Path) -> None:
    assert ".deployignore" not in Manifest.build(build, ExcludeRules.from_lines([]))


def test_it_brings_back_a_file_inside_an_excluded_folder(build: Path) -> None:
    rules = ExcludeRules.from_lines(["storage/", "!storage/logs/app.log"])

    manifest = Manifest.build(build, rules)

    assert "storage/logs/app.log" in manifest
    assert "storage" not in manifest


def test_it_round_trips_through_json(build: Path) -> None:
    manifest = Manifest.build(build, ExcludeRules.from_lines([]))

    data = manifest.to_json()

    assert Manifest.from_json(data) == manifest
    assert data == Manifest.from_json(data).to_json()
    assert data.startswith(b'{"version":1,')
    assert b", " not in data
    assert b": " not in data


def test_it_round_trips_file_names_that_are_not_utf8(tmp_path: Path) -> None:
    root = tmp_path / "build"
    root.mkdir()
    (Path(os.fsdecode(bytes(root) + b"/caf\xe9.txt"))).write_text("latin-1 name")

    manifest = Manifest.build(root)

    assert Manifest.from_json(manifest.to_json()) == manifest


def test_it_refuses_an_unknown_manifest_version() -> None:
    with pytest.raises(InternalError):
        Manifest.from_json(b'{"version":99,"entries":[]}')


def test_it_reads_a_manifest_a_database_column_already_parsed(tmp_path) -> None:
    root = tmp_path / "build"
    (root / "app").mkdir(parents=True)
    (root / "app" / "main.py").write_text("print('hi')\n")
    manifest = Manifest.build(root)
    assert Manifest.from_document(json.loads(manifest.to_json())) == manifest
    for document in ({"version": 99, "entries": []}, ["not", "a", "manifest"], None):
        with pytest.raises(InternalError):
            Manifest.from_document(document)


# --------------------------------------------------------------------------- hash cache

# Long enough for any filesystem's timestamp tick here, short enough to wait out in a test.
_SHORT_RACY_WINDOW_NS = 50_000_000


@pytest.fixture
def short_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest_module, "RACY_WINDOW_NS", _SHORT_RACY_WINDOW_NS)


def _wait_out_the_racy_window() -> None:
    time.sleep(2 * _SHORT_RACY_WINDOW_NS / 1e9)


def test_it_reuses_the_cached_digest_of_files_that_did_not_change(
    build: Path, short_racy_window: None
) -> None:
    cache = HashCache()
    _wait_out_the_racy_window()
    first = Manifest.build(build, cache=cache)
    assert (cache.hits, cache.misses, len(cache)) == (0, 5, 5)

    second = Manifest.build(build, cache=cache)

    assert second == first == Manifest.build(build)
    assert (cache.hits, cache.misses) == (5, 0)


def test_it_hashes_again_a_file_rewritten_with_the_same_size_and_mtime(
    build: Path, short_racy_window: None
) -> None:
    cache = HashCache()
    _wait_out_the_racy_window()
    Manifest.build(build, cache=cache)
    rewritten = build / "index.php"
    before = rewritten.stat()
    rewritten.write_bytes(rewritten.read_bytes().upper())
    os.utime(rewritten, ns=(before.st_atime_ns, before.st_mtime_ns))
    replaced = build / "bin" / "console"
    staging = replaced.with_name("console.new")
    staging.write_bytes(replaced.read_bytes().upper())
    staging.chmod(0o755)
    os.utime(staging, ns=(before.st_atime_ns, replaced.stat().st_mtime_ns))
    staging.replace(replaced)

    manifest = Manifest.build(build, cache=cache)

    assert manifest == Manifest.build(build)
    assert manifest["index.php"].digest == _sha256(b"<?PHP ECHO 'HI';")
    assert (cache.hits, cache.misses) == (3, 2)


def test_it_never_trusts_a_file_changed_just_before_the_scan(build: Path) -> None:
    # A rewrite in the same timestamp tick would leave size, mtime, ctime and inode as they
    # were: a file changed within the racy window is hashed again every time, even when its
    # mtime says it is old (as after unpacking an archive).
    an_hour_ago = time.time_ns() - 3600 * 10**9
    for path in build.rglob("*"):
        os.utime(path, ns=(an_hour_ago, an_hour_ago), follow_symlinks=False)
    cache = HashCache()
    Manifest.build(build, cache=cache)
    assert len(cache) == 0
    rewritten = build / "index.php"
    before = rewritten.stat()
    rewritten.write_bytes(rewritten.read_bytes().upper())
    os.utime(rewritten, ns=(before.st_atime_ns, before.st_mtime_ns))

    manifest = Manifest.build(build, cache=cache)

    assert manifest["index.php"].digest == _sha256(b"<?PHP ECHO 'HI';")
    assert len(cache) == 0
    assert cache.hits == 0


def test_it_forgets_files_that_are_gone_or_excluded(build: Path, short_racy_window: None) -> None:
    cache = HashCache()
    _wait_out_the_racy_window()
    Manifest.build(build, cache=cache)
    (build / "index.php").unlink()

    Manifest.build(build, ExcludeRules.from_lines(["storage/logs/"]), cache=cache)

    assert len(cache) == 2  # bin/console, public/logo.png


def test_it_saves_and_loads_the_cache(build: Path, tmp_path: Path, short_racy_window: None) -> None:
    (build / "caf\udce9.txt").write_text("a name that is not UTF-8")
    cache = HashCache()
    _wait_out_the_racy_window()
    Manifest.build(build, cache=cache)
    path = tmp_path / "workspace.hashes"

    cache.save(path)
    loaded = HashCache.load(path)
    manifest = Manifest.build(build, cache=loaded)

    assert (loaded.hits, loaded.misses) == (6, 0)
    assert manifest == Manifest.build(build)
    assert json.loads(path.read_bytes())["version"] == HASH_CACHE_FORMAT_VERSION
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["build", "workspace.hashes"]


def test_a_saved_cache_can_forget_its_digests_and_the_next_build_reads_them_from_disk(
    build: Path, tmp_path: Path, short_racy_window: None
) -> None:
    cache = HashCache()
    _wait_out_the_racy_window()
    Manifest.build(build, cache=cache)
    path = tmp_path / "workspace.hashes"
    cache.save(path)
    saved = len(cache)

    cache.forget()

    assert (len(cache), saved) == (0, len(HashCache.load(path)))
    assert saved > 0
    loaded = HashCache.load(path)
    Manifest.build(build, cache=loaded)
    assert loaded.misses == 0


@pytest.mark.parametrize(
    "content",
    [
        None,
        b"not json",
        b"[]",
        b'{"version":99,"fields":[],"entries":[]}',
        b'{"version":1,"fields":["path","size","mtime_ns","ctime_ns","inode","sha256"],'
        b'"entries":[["a.txt",1,2,3,4,"short digest"]]}',
    ],
)
def test_it_starts_from_an_empty_cache_when_the_saved_one_is_unusable(
    content: bytes | None, tmp_path: Path
) -> None:
    path = tmp_path / "workspace.hashes"
    if content is not None:
        path.write_bytes(content)

    assert len(HashCache.load(path)) == 0


# --------------------------------------------------------------------------- change sets


def _entry(path: str, content: str = "x", *, kind: EntryKind = "file", mode: int = 0o644) -> Entry:
    if kind == "dir":
        return Entry(path=path, kind="dir", size=0, mode=0o755, digest="")
    data = content.encode()
    return Entry(path=path, kind=kind, size=len(data), mode=mode, digest=_sha256(data))


def test_it_sends_everything_on_a_first_deploy() -> None:
    new = Manifest([_entry("a.txt", "aaa"), _entry("b/c.txt", "cc"), _entry("empty", kind="dir")])

    changes = diff(None, new)

    assert changes == ChangeSet(added=["a.txt", "b/c.txt", "empty"], bytes_to_send=5)
    assert not changes.is_empty


def test_it_finds_added_modified_and_deleted_paths() -> None:
    old = Manifest(
        [
            _entry("same.txt", "same"),
            _entry("changed.txt", "old"),
            _entry("gone.txt", "bye"),
            _entry("chmod.sh", "run"),
            _entry("link", "target", kind="symlink"),
            _entry("old/only/file.txt"),
        ]
    )
    new = Manifest(
        [
            _entry("same.txt", "same"),
            _entry("changed.txt", "new content"),
            _entry("chmod.sh", "run", mode=0o755),
            _entry("link", "target"),  # a symlink replaced by a file
            _entry("fresh/file.txt", "12345"),
        ]
    )

    changes = diff(old, new)

    assert changes.added == ["fresh/file.txt"]
    assert changes.modified == ["changed.txt", "chmod.sh", "link"]
    assert changes.deleted == ["gone.txt", "old", "old/only", "old/only/file.txt"]
    assert changes.bytes_to_send == len("12345") + len("new content") + len("run") + len("target")
    assert changes.paths_to_send == ["changed.txt", "chmod.sh", "fresh/file.txt", "link"]


def test_it_finds_no_changes_between_identical_builds(build: Path) -> None:
    rules = ExcludeRules.from_lines(["storage/logs/"])

    changes = diff(Manifest.build(build, rules), Manifest.build(build, rules))

    assert changes.is_empty
    assert changes.bytes_to_send == 0


def test_it_deletes_then_adds_a_path_that_turns_from_folder_to_file() -> None:
    old = Manifest([_entry("assets/app.js"), _entry("config")])
    new = Manifest([_entry("assets"), _entry("config/app.ini")])

    changes = diff(old, new)

    assert changes.deleted == ["assets", "assets/app.js", "config"]
    assert changes.added == ["assets", "config/app.ini"]


def test_it_keeps_a_folder_that_became_empty_or_filled() -> None:
    old = Manifest([_entry("cache", kind="dir"), _entry("logs/app.log")])
    new = Manifest([_entry("cache/warm.bin"), _entry("logs", kind="dir")])

    changes = diff(old, new)

    assert changes.deleted == ["logs/app.log"]
    assert changes.added == ["cache/warm.bin"]


# --------------------------------------------------------------------------- tar stream


def _extract(chunks: list[bytes], dest: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks)), mode="r:gz") as archive:
        # Our own archive; the "tar" filter still keeps the symlinks that "data" would refuse.
        archive.extractall(dest, filter="tar")


def test_it_streams_a_tar_that_unpacks_to_the_same_tree(build: Path, tmp_path: Path) -> None:
    rules = ExcludeRules.from_lines(["storage/logs/"])
    manifest = Manifest.build(build, rules)
    unpacked = tmp_path / "unpacked"

    _extract(list(tar_stream(build, list(manifest), manifest)), unpacked)

    assert Manifest.build(unpacked) == manifest
    assert os.readlink(unpacked / "current-env") == "../shared/.env"


def test_it_streams_only_the_paths_asked_for_with_anonymous_owners(
    build: Path, tmp_path: Path
) -> None:
    manifest = Manifest.build(build)
    data = b"".join(tar_stream(build, ["bin/console", "var/cache"], manifest))

    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        members = archive.getmembers()

    assert [member.name for member in members] == ["bin/console", "var/cache"]
    assert [member.mode for member in members] == [0o755, 0o755]
    assert {(member.uid, member.gid, member.uname, member.gname) for member in members} == {
        (0, 0, "", "")
    }


def test_it_streams_in_bounded_chunks_without_reading_ahead(tmp_path: Path) -> None:
    root = tmp_path / "build"
    _write(root, {"big.bin": os.urandom(3 * 1024 * 1024), "small.txt": "s"})
    manifest = Manifest.build(root)

    stream = tar_stream(root, ["big.bin", "small.txt"], manifest)
    first = next(stream)
    # The stream is lazy: a file changed after the first chunk is only noticed on reaching it.
    (root / "small.txt").write_text("grown since the manifest")
    later: list[bytes] = []
    with pytest.raises(InternalError, match=r"small\.txt"):
        later.extend(stream)

    assert {len(chunk) for chunk in [first, *later]} == {TAR_CHUNK_BYTES}


def test_it_refuses_a_path_missing_from_the_manifest(build: Path) -> None:
    manifest = Manifest.build(build)

    with pytest.raises(InternalError):
        list(tar_stream(build, ["nope.txt"], manifest))


def test_it_preserves_long_and_unicode_names(tmp_path: Path) -> None:
    root = tmp_path / "build"
    long_name = "/".join(["deeply-nested-folder"] * 8) + "/é-file-with-a-long-name.txt"
    _write(root, {long_name: "deep", "ünïcode.txt": "u"})
    manifest = Manifest.build(root)
    unpacked = tmp_path / "unpacked"

    _extract(list(tar_stream(root, list(manifest), manifest, compresslevel=6)), unpacked)

    assert Manifest.build(unpacked) == manifest


# --------------------------------------------------------------------------- end to end


def test_it_deploys_only_what_changed_between_two_exported_revisions(
    git_repo_factory: GitRepoFactory, tmp_path: Path
) -> None:
    origin = git_repo_factory()
    first = origin.commit(
        {"app.py": "v1", "static/a.css": "a", "notes.log": "x", ".deployignore": "*.log\n"},
        "One",
    )
    second = origin.commit({"app.py": "v2", "static/a.css": None, "static/b.css": "b"}, "Two")
    mirror = Mirror(tmp_path / "mirror.git", origin.url, allow_local=True)
    mirror.fetch()
    build = tmp_path / "build"

    mirror.export(first, build)
    before = Manifest.build(build, ExcludeRules.from_lines(load_deployignore(build)))
    mirror.export(second, build)
    after = Manifest.build(build, ExcludeRules.from_lines(load_deployignore(build)))

    changes = diff(before, after)
    assert changes.added == ["static/b.css"]
    assert changes.modified == ["app.py"]
    assert changes.deleted == ["static/a.css"]
    assert "notes.log" not in after
    assert ".deployignore" not in after
