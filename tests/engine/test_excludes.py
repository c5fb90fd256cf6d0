"""Excluded files: which paths a set of rules leaves out of a deploy."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from builds.engine.excludes import ExcludeRules, load_deployignore


@pytest.mark.parametrize(
    ("rules", "path", "excluded"),
    [
        # A name without "/" matches at any depth.
        (["*.log"], "debug.log", True),
        (["*.log"], "a/b/c.log", True),
        (["*.log"], "a/b/c.log.txt", False),
        (["node_modules"], "node_modules/react/index.js", True),
        (["node_modules"], "web/node_modules/react/index.js", True),
        (["README"], "docs/README", True),
        # "*" and "?" stay inside one segment.
        (["/config/*.yml"], "config/app.yml", True),
        (["/config/*.yml"], "config/env/app.yml", False),
        (["/a?c"], "abc", True),
        (["/a?c"], "a/c", False),
        # A leading "/" or an inner "/" anchors at the root.
        (["/secrets.txt"], "secrets.txt", True),
        (["/secrets.txt"], "sub/secrets.txt", False),
        (["config/database.yml"], "config/database.yml", True),
        (["config/database.yml"], "app/config/database.yml", False),
        # "**" spans segments.
        (["**/cache"], "cache/x", True),
        (["**/cache"], "var/tmp/cache/x", True),
        (["**/cache"], "var/cached", False),
        (["docs/**"], "docs/a/b/c.md", True),
        (["docs/**"], "docs.md", False),
        (["a/**/b"], "a/b", True),
        (["a/**/b"], "a/x/y/b", True),
        (["a/**/b"], "a/x/y/b/file.txt", True),
        (["a/**/b"], "x/a/b", False),
        (["/src/**/*.test.js"], "src/deep/er/app.test.js", True),
        (["/src/**/*.test.js"], "src/app.js", False),
        # A folder rule excludes what is inside; a trailing "/" matches folders only.
        (["tests"], "tests/unit/test_a.py", True),
        (["tmp/"], "tmp/upload.bin", True),
        (["tmp/"], "app/tmp/upload.bin", True),
        (["tmp/"], "tmp", False),
        (["/storage/logs/"], "storage/logs/laravel.log", True),
        (["/storage/logs/"], "app/storage/logs/laravel.log", False),
        # Character classes.
        (["*.[oa]"], "lib/x.o", True),
        (["*.[!oa]"], "lib/x.c", True),
        (["*.[!oa]"], "lib/x.o", False),
        # "!" includes again; the last matching rule wins.
        (["*.log", "!keep.log"], "logs/keep.log", False),
        (["*.log", "!keep.log"], "logs/other.log", True),
        (["!keep.log", "*.log"], "keep.log", True),
        (["vendor/", "!vendor/autoload.php"], "vendor/autoload.php", False),
        (["vendor/", "!vendor/autoload.php"], "vendor/lib/x.php", True),
        # Blank lines and comments are no rules; escapes make them literal.
        (["", "   ", "# *.py"], "app.py", False),
        (["\\#notes"], "#notes", True),
        (["\\!important"], "!important", True),
        # Dots and other regex characters are literal.
        (["/app.min.js"], "appxminxjs", False),
        (["/a+b(c).txt"], "a+b(c).txt", True),
    ],
)
def test_it_applies_deploy_exclusion_rules(rules: list[str], path: str, excluded: bool) -> None:
    assert ExcludeRules.from_lines(rules).excludes(path) is excluded


def test_it_matches_a_folder_only_rule_against_a_folder_itself() -> None:
    rules = ExcludeRules.from_lines(["tmp/", "/docs/**"])

    assert rules.excludes("tmp", is_dir=True)
    assert not rules.excludes("tmp")
    assert not rules.excludes("docs", is_dir=True)


def test_it_always_excludes_the_deployignore_file() -> None:
    assert ExcludeRules.from_lines([]).excludes(".deployignore")
    assert ExcludeRules.from_lines(["!.deployignore"]).excludes(".deployignore")
    assert not ExcludeRules.from_lines([]).excludes("sub/.deployignore")


def test_it_filters_paths_keeping_their_order() -> None:
    rules = ExcludeRules.from_lines(["*.log", "/.env", "node_modules/"])
    paths = ["z.txt", "a.log", ".env", "web/.env", "node_modules/x.js", "app.py", ".deployignore"]

    assert rules.filter(paths) == ["z.txt", "web/.env", "app.py"]


def test_it_reads_a_committed_deployignore(tmp_path: Path) -> None:
    (tmp_path / ".deployignore").write_text("# build leftovers\n*.map\n\n/tests/\n")

    lines = load_deployignore(tmp_path)

    assert ExcludeRules.from_lines(lines).filter(["app.js", "app.js.map", "tests/a.py"]) == [
        "app.js"
    ]


def test_it_treats_a_missing_deployignore_as_no_rules(tmp_path: Path) -> None:
    assert load_deployignore(tmp_path) == []


def test_it_checks_five_thousand_paths_against_fifty_rules_quickly() -> None:
    rules = ExcludeRules.from_lines(
        [f"/module{index}/**/*.tmp" for index in range(25)]
        + [f"*.ext{index}" for index in range(20)]
        + ["node_modules/", "**/cache/**", "!keep.ext1", "/docs/", "*.log"]
    )
    paths = [f"src/pkg{index % 40}/sub{index % 7}/file{index}.py" for index in range(5_000)]

    started = time.perf_counter()
    kept = rules.filter(paths)
    elapsed = time.perf_counter() - started

    assert kept == paths
    assert elapsed < 0.5, f"took {elapsed:.3f}s"
