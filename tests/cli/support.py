"""Running the `slipway` console script against the served Slipway of tests/cli/conftest.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

SLIPWAY = str(Path(sys.executable).with_name("slipway"))


def slipway(
    served: dict[str, Any], *arguments: str, home: Path | None = None, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    """Run `slipway ARGUMENTS` with its output captured (a pipe, not a terminal)."""
    env = {**os.environ, "SLIPWAY_URL": served["url"], "SLIPWAY_TOKEN": served["token"]}
    env.pop("NO_COLOR", None)
    if home is not None:
        env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
        env.pop("SLIPWAY_URL", None)
        env.pop("SLIPWAY_TOKEN", None)
    env.update(extra_env)
    return subprocess.run(
        [SLIPWAY, *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
