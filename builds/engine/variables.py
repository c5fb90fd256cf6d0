"""DeployHQ-style ``%variable%`` substitution in commands and config files."""

from __future__ import annotations

import re
from collections.abc import Mapping

_VARIABLE = re.compile(r"%([a-z_][a-z0-9_]*)%")

#: The variables a deployment defines, with what each holds (shown beside editors).
DOCUMENTED = {
    "release_path": "The release directory being deployed",
    "shared_path": "The shared directory (linked into every release)",
    "current_path": "The `current` symlink",
    "deploy_path": "The server's deploy path",
    "startrev": "The revision live before this deployment",
    "endrev": "The revision being deployed",
    "branch": "The branch being deployed",
    "environment": "The server's environment label",
    "deployer": "Who started the deployment",
    "project": "The project's name",
    "server": "The server's name",
    "hostname": "The server's host name",
    "groupindex": "The server's place in the deployment, from 1 (e.g. migrate only where it is 1)",
    "release": "The release name",
}


def substitute(text: str, values: Mapping[str, str]) -> str:
    """Replace each known ``%name%``; unknown names are left as they are."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        return values[name] if name in values else match.group(0)

    return _VARIABLE.sub(replace, text)
