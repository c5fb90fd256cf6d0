"""Real git repositories for tests, made with the git CLI (a pytest plugin module).

The repositories ignore the machine's global and system git config, so the tests behave the
same on a developer's laptop, on CI and on a fresh worker.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

FileContent = str | bytes | None


def hermetic_git_environment() -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    environment.update(
        {
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "LC_ALL": "C",
        }
    )
    return environment


class GitRepo:
    """A non-bare repository whose history a test writes commit by commit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True)
        self.git("-c", "init.defaultBranch=main", "init", "--quiet")
        self.git("config", "user.name", "Alice Example")
        self.git("config", "user.email", "alice@example.com")
        self.git("config", "commit.gpgsign", "false")

    @property
    def url(self) -> str:
        return self.path.as_uri()

    def git(self, *arguments: str) -> str:
        result = subprocess.run(
            ["git", *arguments],
            cwd=self.path,
            env=hermetic_git_environment(),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f"git {' '.join(arguments)} failed:\n{result.stderr}")
        return result.stdout.strip()

    def commit(
        self,
        files: Mapping[str, FileContent],
        message: str = "Change files",
        *,
        executable: Iterable[str] = (),
        symlinks: Mapping[str, str] | None = None,
    ) -> str:
        """Write, delete (None) or link files, commit everything and return the new SHA."""
        for relative, content in files.items():
            self._write(relative, content)
        for relative in executable:
            (self.path / relative).chmod(0o755)
        for relative, target in (symlinks or {}).items():
            link = self.path / relative
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)
        self.git("add", "--all")
        self.git("commit", "--quiet", "--allow-empty", "-m", message)
        return self.head()

    def _write(self, relative: str, content: FileContent) -> None:
        target = self.path / relative
        if content is None:
            target.unlink()
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def tag(self, name: str, *, message: str | None = None) -> str:
        """Tag HEAD (annotated when a message is given) and return the tagged commit."""
        if message is None:
            self.git("tag", name)
        else:
            self.git("tag", "-a", name, "-m", message)
        return self.head()

    def branch(self, name: str) -> None:
        """Create a branch at HEAD and switch to it, so the next commits land on it."""
        self.git("switch", "--quiet", "-c", name)

    def switch(self, name: str) -> None:
        self.git("switch", "--quiet", name)


class GitRepoFactory:
    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, name: str = "origin") -> GitRepo:
        return GitRepo(self.root / name)


@pytest.fixture
def git_repo_factory(tmp_path: Path) -> GitRepoFactory:
    return GitRepoFactory(tmp_path / "repos")
