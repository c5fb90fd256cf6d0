"""Excluded files: paths of the build that are never uploaded (DeployHQ semantics).

Each rule is a glob relative to the build root, in the spirit of .gitignore:

- ``*`` and ``?`` stay inside one path segment, ``**`` spans segments
  (``**/foo``, ``foo/**``, ``a/**/b``);
- a rule matching a folder excludes everything under it; a trailing ``/`` matches folders only;
- a leading ``/`` (or any ``/`` inside the rule) anchors it at the root, while a rule without
  ``/`` matches a name at any depth (``*.log`` excludes ``a/b/c.log``);
- ``!rule`` includes again, and the last matching rule wins. Unlike .gitignore, a file can be
  included again inside an excluded folder (``vendor/`` then ``!vendor/keep.php``), which is
  what people writing deploy rules expect.

``.deployignore`` itself is always excluded.

What each rule removed from a build is collected in an ``Exclusions`` report (per rule: how
many paths, the first few), which the build log and the preview show: a rule such as
``staticfiles/`` matches that name at any depth, and people must be able to see that it also
removed ``vendor/django/contrib/staticfiles/``.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from builds.engine.errors import InvalidInput

DEPLOYIGNORE = ".deployignore"

# Where a rule comes from (for the report of what it removed).
SOURCE_PROJECT = "excluded files"
SOURCE_DEPLOYIGNORE = DEPLOYIGNORE
SOURCE_GENERATED = "generated paths"
#: Paths Slipway writes itself (shared links, config files): not reported.
SOURCE_MANAGED = "managed"
#: How many paths the report keeps per rule.
REPORTED_PATHS = 5


@dataclass(frozen=True)
class ExcludeRule:
    pattern: str
    negated: bool
    folders_only: bool
    regex: str
    source: str = SOURCE_PROJECT


def parse_rules(lines: Iterable[str], source: str) -> list[ExcludeRule]:
    """The rules of ``lines`` (blank lines and comments skipped), each marked with ``source``."""
    rules = []
    for line in lines:
        rule = parse_rule(line, source)
        if rule is not None:
            rules.append(rule)
    return rules


def parse_rule(line: str, source: str = SOURCE_PROJECT) -> ExcludeRule | None:
    """Turn one line into a rule; None for blank lines and comments."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    negated = text.startswith("!")
    # "\#" and "\!" stand for a literal leading # or !.
    if negated or text.startswith(("\\#", "\\!")):
        text = text[1:]
    folders_only = text.endswith("/")
    body = text.strip("/") if folders_only else text.lstrip("/")
    if not body:
        return None
    anchored = "/" in text.rstrip("/")
    # An unanchored rule matches at any depth: a leading "**" (one gap more to bound).
    regex = _glob_to_regex(body if anchored else "**/" + body)
    try:
        re.compile(regex)
    except re.error as exc:
        # "[z-a]" was taken, then failed the deployment with an internal error.
        raise InvalidInput(source, f"{line.strip()!r} is not a valid glob ({exc}).") from None
    return ExcludeRule(
        pattern=line.strip(),
        negated=negated,
        folders_only=folders_only,
        regex=regex,
        source=source,
    )


def _glob_to_regex(glob: str) -> str:
    """The regex of a rule's glob, matched against a whole path (a suffix follows it).

    Each "**" but the last is a gap of whole folders followed by the segments up to the next
    "**"; that gap takes the earliest place those segments fit, in an atomic group, never
    retried: a later place could only leave less to the rest, which a later "**" absorbs
    anyway. Plain "(?:.*/)?" gaps backtracked into each other: eight "**" against a path 40
    folders deep took 20 s per path (the regex engine holds the GIL: the embedded web server
    froze too). The last gap stays plain, so that what follows the rule's regex decides."""
    segments = [
        segment
        for index, segment in enumerate(glob.split("/"))
        # "**/**" is "**".
        if not (segment == "**" and index > 0 and glob.split("/")[index - 1] == "**")
    ]
    last_gap = max((i for i, segment in enumerate(segments) if segment == "**"), default=-1)
    pieces: list[str] = []
    index = 0
    while index < len(segments):
        segment = segments[index]
        is_last = index == len(segments) - 1
        if segment != "**":
            pieces.append(_segment_to_regex(segment) + ("" if is_last else "/"))
            index += 1
            continue
        if is_last:
            # A trailing "/**" means "anything inside".
            pieces.append(".*")
            break
        # The segments up to the next "**" (or the end), after the gap.
        end = index + 1
        while end < len(segments) and segments[end] != "**":
            end += 1
        run = "/".join(_segment_to_regex(part) for part in segments[index + 1 : end])
        follows = "/" if end < len(segments) else ""
        if index == last_gap:
            pieces.append("(?:.*/)?" + run + follows)
        else:
            pieces.append("(?>(?:.*?/)??" + run + "(?=/|$))" + follows)
        index = end
    return "".join(pieces)


def _segment_to_regex(segment: str) -> str:
    regex: list[object] = []
    index = 0
    while index < len(segment):
        character = segment[index]
        if character == "*":
            while index + 1 < len(segment) and segment[index + 1] == "*":
                index += 1
            regex.append(_STAR)
        elif character == "?":
            regex.append("[^/]")
        elif character == "[" and (end := _class_end(segment, index)) != -1:
            regex.append(_class_to_regex(segment[index + 1 : end]))
            index = end
        elif character == "\\" and index + 1 < len(segment):
            index += 1
            regex.append(re.escape(segment[index]))
        else:
            regex.append(re.escape(character))
        index += 1
    # As with "**" in _glob_to_regex: each "*" but the last takes the earliest place what
    # follows it fits, atomically (what follows up to the next "*" has a fixed length). Plain
    # "[^/]*" backtracked into each other: "*a*a*a*a*a*a*a*a*b" against a 200-character name
    # ran for minutes.
    stars = [i for i, piece in enumerate(regex) if piece is _STAR]
    for star, following in itertools.pairwise(stars):
        regex[star] = "(?>[^/]*?" + "".join(map(str, regex[star + 1 : following])) + ")"
        regex[star + 1 : following] = [""] * (following - star - 1)
    return "".join("[^/]*" if piece is _STAR else str(piece) for piece in regex)


#: A "*" of a segment while it is turned into a regex.
_STAR = object()


def _class_end(segment: str, start: int) -> int:
    index = start + 1
    if index < len(segment) and segment[index] in "!^":
        index += 1
    if index < len(segment) and segment[index] == "]":
        index += 1
    return segment.find("]", index)


def _class_to_regex(body: str) -> str:
    negated = body[:1] in ("!", "^")
    if negated:
        body = body[1:]
    escaped = body.replace("\\", "\\\\").replace("[", "\\[")
    return f"[^/{escaped}]" if negated else f"[{escaped}]"


class ExcludeRules:
    """An ordered set of rules, compiled into two regexes (one pass per path)."""

    def __init__(self, rules: Iterable[ExcludeRule], *, ignored_paths: Iterable[str] = ()) -> None:
        self.rules: tuple[ExcludeRule, ...] = tuple(rules)
        #: Exact paths left out together with everything under them, whatever the rules
        #: say (``export-ignore`` in .gitattributes, see git.Mirror.export_ignored).
        self.ignored_paths = frozenset(path.strip("/") for path in ignored_paths)
        self.has_negations = any(rule.negated for rule in self.rules)
        # Alternatives are tried in order, so listing the rules last-first makes the first
        # alternative that matches the whole path the last rule that matches it.
        newest_first = list(reversed(self.rules))
        self._rule_for_group = newest_first
        self._files = _compile_alternatives(
            rule.regex + ("/.+" if rule.folders_only else "(?:/.*)?") for rule in newest_first
        )
        self._folders = _compile_alternatives(rule.regex + "(?:/.*)?" for rule in newest_first)

    @classmethod
    def from_lines(cls, lines: Iterable[str], *, ignored_paths: Iterable[str] = ()) -> ExcludeRules:
        return cls(
            (rule for line in lines if (rule := parse_rule(line)) is not None),
            ignored_paths=ignored_paths,
        )

    def excludes(self, path: str, *, is_dir: bool = False) -> bool:
        """True when ``path`` (relative to the build root, ``/``-separated) is left out."""
        path = path.strip("/")
        if path == DEPLOYIGNORE or (self.ignored_paths and self._ignored(path)):
            return True
        return self.rule_excluding(path, is_dir=is_dir) is not None

    def rule_excluding(self, path: str, *, is_dir: bool = False) -> ExcludeRule | None:
        """The rule that leaves ``path`` out (the last one matching it), or None when the path
        is deployed (no rule matches, or the last match is a ``!rule``). ``.deployignore``
        itself is left out by no rule."""
        compiled = self._folders if is_dir else self._files
        if compiled is None:
            return None
        match = compiled.fullmatch(path.strip("/"))
        if match is None or match.lastindex is None:
            return None
        rule = self._rule_for_group[match.lastindex - 1]
        return None if rule.negated else rule

    def _ignored(self, path: str) -> bool:
        while path:
            if path in self.ignored_paths:
                return True
            path = path.rpartition("/")[0]
        return False

    def filter(self, paths: Iterable[str]) -> list[str]:
        """The paths that are deployed (those no rule excludes), in their original order."""
        return [path for path in paths if not self.excludes(path)]

    def __len__(self) -> int:
        return len(self.rules)


@dataclass
class Excluded:
    """What one rule removed from a build: ``count`` paths, the first ``REPORTED_PATHS`` of
    them (in path order) in ``examples``; a folder removed as a whole counts once and ends
    in ``/``."""

    pattern: str
    source: str
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """``"staticfiles/" (excluded files) removed 2 paths: staticfiles/, vendor/...``."""
        shown = ", ".join(self.examples)
        more = (
            f" and {self.count - len(self.examples)} more"
            if self.count > len(self.examples)
            else ""
        )
        noun = "path" if self.count == 1 else "paths"
        return f'"{self.pattern}" ({self.source}) removed {self.count} {noun}: {shown}{more}'


class Exclusions:
    """The report of what each rule removed from one build, in the rules' order of first
    use; the paths Slipway writes itself (``SOURCE_MANAGED``) are left out of it."""

    def __init__(self) -> None:
        self._by_rule: dict[tuple[str, str], Excluded] = {}

    def record(self, rule: ExcludeRule, path: str, *, is_dir: bool) -> None:
        if rule.source == SOURCE_MANAGED:
            return
        entry = self._by_rule.setdefault(
            (rule.source, rule.pattern), Excluded(pattern=rule.pattern, source=rule.source)
        )
        entry.count += 1
        # The first few in path order, whatever order the folders were read in.
        bisect.insort(entry.examples, path + "/" if is_dir else path)
        del entry.examples[REPORTED_PATHS:]

    @property
    def rules(self) -> list[Excluded]:
        return list(self._by_rule.values())

    def lines(self) -> list[str]:
        """One line per rule that removed something (for the build log)."""
        return [f"Excluded: {entry.describe()}" for entry in self._by_rule.values()]


def _compile_alternatives(regexes: Iterable[str]) -> re.Pattern[str] | None:
    alternatives = [f"({regex})" for regex in regexes]
    if not alternatives:
        return None
    return re.compile("|".join(alternatives), re.DOTALL)


def load_deployignore(root: Path) -> list[str]:
    """The lines of the ``.deployignore`` committed at the build root ([] when there is none)."""
    path = root / DEPLOYIGNORE
    if path.is_symlink() or not path.is_file():
        return []
    return path.read_text(encoding="utf-8", errors="replace").splitlines()
