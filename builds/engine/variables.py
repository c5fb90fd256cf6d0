"""DeployHQ-style ``%variable%`` substitution in commands and config files.

Two kinds of substitution, by where the text goes:

- Config files are not shell: :func:`substitute` puts each value in as it is.
- Commands (SSH commands, command health checks) are shell: a value must never become code,
  whatever it holds (a project called ``x; rm -rf ~``, a branch called ``$(id)``). So
  :func:`substitute_shell` puts in a *reference* to an environment variable
  (``"$SLIPWAY_VAR_branch"``) and :func:`shell_exports` defines those variables, each value
  single-quoted with ``shlex.quote``, ahead of the command. The shell expands a variable's value
  as data: it is never parsed again for ``;``, ``$(...)``, backticks or quotes.

The reference is written to fit the quoting around ``%name%`` in the command, so that the
documented forms keep their meaning: unquoted (``cd %release_path% && make``) it becomes one
word, ``"$SLIPWAY_VAR_release_path"``; inside double quotes (``echo "on %server%"``) it becomes
``${SLIPWAY_VAR_server}``; inside single quotes (``echo '%server%'``) the quote is closed around
it (``'"$SLIPWAY_VAR_server"'``), so it is expanded there too.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

#: A ``%name%`` reference in a command or a config file.
VARIABLE = re.compile(r"%([a-z_][a-z0-9_]*)%")

#: Prefix of the environment variables that carry ``%variable%`` values into shell commands.
ENV_PREFIX = "SLIPWAY_VAR_"

#: The variables a deployment defines, with what each holds (shown beside editors).
DOCUMENTED = {
    "release_path": "The release directory being deployed",
    "shared_path": "The shared directory (linked into every release)",
    "current_path": "The `current` symlink",
    "deploy_path": "The server's deploy path",
    "startrev": "The revision live before this deployment (in a rollback: the one left)",
    "endrev": "The revision being deployed (in a rollback: the one going back live)",
    "branch": "The branch being deployed",
    "environment": "The server's environment label",
    "deployer": "Who started the deployment",
    "project": "The project's name",
    "server": "The server's name",
    "hostname": "The server's host name",
    "groupindex": "The server's place in the deployment, from 1 (e.g. migrate only where it is 1)",
    "release": "The release name",
    "previous_release_path": "The release live before this switch (in a rollback: the one left)",
    "rollback": "1 in a rollback (and a switch back after a failed check), else 0",
}


def substitute(text: str, values: Mapping[str, str]) -> str:
    """Replace each known ``%name%`` by its value as it is (config files, URLs, the log's
    display of a command); unknown names are left as they are. Never for shell text."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        return values[name] if name in values else match.group(0)

    return VARIABLE.sub(replace, text)


def substitute_shell(command: str, values: Mapping[str, str]) -> str:
    """Replace each known ``%name%`` in a shell command by a reference to the environment
    variable ``SLIPWAY_VAR_<name>`` (see :func:`shell_exports`), shaped for the quoting it
    stands in; unknown names are left as they are.

    The quoting is followed as POSIX sh reads it (backslash escapes, '...' and "..."). Two
    places are read approximately, and stay data all the same: a here-document body counts as
    unquoted (the reference's double quotes then show in it), and a ``$(...)`` inside double
    quotes counts as quoted (``${SLIPWAY_VAR_x}`` there is split at spaces)."""
    out: list[str] = []
    state = ""  # "" unquoted, "'" in single quotes, '"' in double quotes
    position = 0
    while position < len(command):
        match = VARIABLE.match(command, position)
        if match and match.group(1) in values:
            reference = f"{ENV_PREFIX}{match.group(1)}"
            if state == '"':
                out.append("${" + reference + "}")
            elif state == "'":
                out.append(f"'\"${reference}\"'")
            else:
                out.append(f'"${reference}"')
            position = match.end()
            continue
        char = command[position]
        out.append(char)
        position += 1
        if char == "\\" and state != "'" and position < len(command):
            out.append(command[position])
            position += 1
        elif char == "'" and state in ("", "'"):
            state = "" if state else "'"
        elif char == '"' and state in ("", '"'):
            state = "" if state else '"'
    return "".join(out)


def shell_exports(values: Mapping[str, str]) -> str:
    """Shell lines defining ``SLIPWAY_VAR_<name>`` for each variable, each value quoted with
    ``shlex.quote`` (a single-quoted word: nothing in it is special to the shell)."""
    return "".join(
        f"export {ENV_PREFIX}{name}={shlex.quote(value)}\n"
        for name, value in values.items()
        if re.fullmatch(r"[a-z_][a-z0-9_]*", name)
    )
