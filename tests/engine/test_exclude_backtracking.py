"""Exclude rules match in time linear-ish in the path, whatever their "**" and "*": the
regex of each gap but the last is atomic (docs: builds/engine/excludes.py). Eight "**" against
a path 40 folders deep took 20 s per path, and the regex engine holds the GIL (the embedded
web server froze with it); a rule that is no glob ("[z-a]") is refused naming it."""

from __future__ import annotations

import random
import re
import time

import pytest

from builds.engine.errors import InvalidInput
from builds.engine.excludes import ExcludeRules, parse_rule, parse_rules


@pytest.mark.parametrize(
    "rule",
    [
        "**/**/**/**/**/**/**/**/**/**/x",
        "**/a/**/a/**/a/**/a/**/a/**/a/**/a/**/x",
        "*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b",
        "**/*a*a*a*a*a*a*/**/*a*a*a*a*a*b/**/x/",
    ],
)
def test_a_rule_full_of_stars_matches_a_deep_path_at_once(rule):
    rules = ExcludeRules(parse_rules([rule], "excluded files"))
    started = time.monotonic()
    for path in ("a" * 250 + "y", "a/" * 2000 + "y", ("a" * 200 + "/") * 50 + "y"):
        assert not rules.excludes(path)
        assert not rules.excludes(path, is_dir=True)
    assert time.monotonic() - started < 2


def _plain(glob: str) -> str:
    """The regex of ``glob`` as a plain backtracking translation: the reference."""
    pieces = []
    segments = glob.split("/")
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            pieces.append(".*" if last else "(?:.*/)?")
            continue
        text = ""
        position = 0
        while position < len(segment):
            character = segment[position]
            if character == "*":
                text += "[^/]*"
            elif character == "?":
                text += "[^/]"
            elif character == "[":
                end = segment.index("]", position)
                body = segment[position + 1 : end]
                text += f"[^/{body[1:]}]" if body[:1] == "!" else f"[{body}]"
                position = end
            else:
                text += re.escape(character)
            position += 1
        pieces.append(text + ("" if last else "/"))
    # A rule without a "/" matches at any depth.
    return ("" if "/" in glob else "(?:.*/)?") + "".join(pieces)


def test_the_atomic_gaps_match_what_plain_ones_match():
    chooser = random.Random(7)
    segments = ["a", "b", "*", "**", "?", "a*", "*b", "[ab]", "[!a]", "*a*", "a*b*a", "b*"]
    names = ["a", "b", "ab", "ba", "c", "aab", "abab", "bba"]
    for _ in range(3000):
        glob = "/".join(chooser.choice(segments) for _ in range(chooser.randint(1, 6)))
        rule = parse_rule(glob)
        assert rule is not None
        plain = re.compile(_plain(glob) + "(?:/.*)?", re.DOTALL)
        atomic = re.compile(rule.regex + "(?:/.*)?", re.DOTALL)
        for _ in range(10):
            path = "/".join(chooser.choice(names) for _ in range(chooser.randint(1, 8)))
            assert bool(plain.fullmatch(path)) == bool(atomic.fullmatch(path)), (glob, path)


def test_a_rule_that_is_no_glob_is_refused_naming_it():
    with pytest.raises(InvalidInput) as caught:
        parse_rule("[z-a]", ".deployignore")

    assert str(caught.value).startswith(".deployignore: '[z-a]' is not a valid glob")
