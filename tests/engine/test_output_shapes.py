"""Masking and line splitting cost time linear in the output, whatever its shape, and a secret
is masked in the forms a command prints it in."""

from __future__ import annotations

import random
import string
import subprocess
import time
from collections.abc import Callable

import pytest

from builds.engine.lines import CUT_MARGIN_CHARS, MAX_LINE_CHARS, CutLine, LineSplitter
from builds.engine.masking import MASK, Masker, base64_forms, printed_forms, unescaped

SMALL, LARGE = 100_000, 1_000_000
# Ten times the text must cost about ten times the work; a quadratic cost gives a hundred.
LINEAR_RATIO_LIMIT = 30


def _secrets() -> list[str]:
    chosen = random.Random(7)
    alphabet = string.ascii_letters + string.digits
    made = ["".join(chosen.choices(alphabet, k=chosen.randint(8, 60))) for _ in range(300)]
    # A secret whose every prefix matches a run of one letter, and a config-file-like value.
    return [*made, "a" * 40 + "b", "DB_PASSWORD=hunter2-hunter2"]


def _best_time(work: Callable[[], object]) -> float:
    """The least CPU time of this thread over several runs: other processes on a busy machine
    slow the wall clock, not this."""
    times = []
    for _ in range(7):
        started = time.thread_time()
        work()
        times.append(time.thread_time() - started)
    return max(min(times), 1e-6)


SHAPES: dict[str, Callable[[int], str]] = {
    # Each ends like a URL with credentials, so that the URL pattern runs over all of it.
    "one letter": lambda n: "a" * (n - 5) + "://u:",
    "digits": lambda n: "1" * (n - 5) + "://u:",
    "digits and letters": lambda n: ("1a" * n)[: n - 5] + "://u:",
    "letters and colons": lambda n: ("ab:" * n)[: n - 5] + "://u:",
    "a scheme then letters": lambda n: ("x://" + "u" * n)[:n],
    "a user then a password without @": lambda n: ("x://u:" + "p" * n)[:n],
    "many URLs with credentials": lambda n: ("a://b:c@ " * n)[:n],
    "base64-like": lambda n: "".join(
        random.Random(n).choices(string.ascii_letters + string.digits + "+/", k=n)
    ),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_masking_a_megabyte_line_costs_ten_times_a_tenth_of_it(shape):
    mask = Masker(_secrets())
    small, large = SHAPES[shape](SMALL), SHAPES[shape](LARGE)

    small_time = _best_time(lambda: mask(small))
    large_time = _best_time(lambda: mask(large))
    cut_small = _best_time(lambda: mask.safe_cut(small, SMALL // 2))
    cut_large = _best_time(lambda: mask.safe_cut(large, LARGE // 2))

    assert large_time / small_time < LINEAR_RATIO_LIMIT, (small_time, large_time)
    assert cut_large / cut_small < LINEAR_RATIO_LIMIT, (cut_small, cut_large)


def test_splitting_a_megabyte_line_costs_ten_times_a_tenth_of_it():
    def split(size: int) -> None:
        splitter = LineSplitter()
        chunk = b"z" * 4096
        for _ in range(size // len(chunk)):
            splitter.feed(chunk)
        splitter.finish()

    assert _best_time(lambda: split(10 * LARGE)) / _best_time(lambda: split(LARGE)) < (
        LINEAR_RATIO_LIMIT
    )


def test_it_keeps_a_long_line_up_to_the_limit_and_a_margin_and_counts_the_rest():
    splitter = LineSplitter()
    lines = []
    for chunk in (b"\xc3", b"\xa9" + b"x" * 100_000, b"y" * 900_000 + b"\r\nnext\n", b"tail"):
        lines += splitter.feed(chunk)
    lines += splitter.finish()

    long, following, tail = lines
    assert isinstance(long, CutLine)
    assert len(long) == MAX_LINE_CHARS + CUT_MARGIN_CHARS and long.startswith("éxxx")
    assert long.dropped_bytes == 2 + 100_000 + 900_000 + 1 - len(long.encode())
    assert (following, tail) == ("next", "tail")


def test_a_line_of_exactly_the_limit_is_an_ordinary_line():
    text = "q" * MAX_LINE_CHARS
    lines = LineSplitter().feed(text.encode() + b"\nafter\n")
    assert lines == [text, "after"]
    assert not isinstance(lines[0], CutLine)


def test_it_masks_a_secret_that_a_command_turns_into_control_characters():
    secret = r"s3cret-one\nsecond-line\tafter-tab\033[0mend"
    mask = Masker([secret])

    # `echo -e "$SECRET"` prints two lines, the second with a tab and an escape sequence.
    first, second = unescaped(secret).split("\n")
    assert mask(first) == MASK
    assert "second-line" not in mask(second) and "after-tab" not in mask(second)
    # The secret as written, in a shell trace or a config dump.
    assert mask(f"+ echo -e {secret}") == f"+ echo -e {MASK}"


def test_it_masks_a_secret_as_dashs_echo_prints_it():
    # dash (Debian's sh) reads \t in `echo` but leaves \x41 alone: neither bash's form.
    secret = r"Zq9\tXk7Long\x41Secret"
    printed = subprocess.run(
        ["/bin/dash", "-c", 'echo "plain=$TOKEN"'],
        env={"TOKEN": secret, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.rstrip("\n")
    assert printed != f"plain={secret}"  # dash really did transform it
    masked = Masker([secret])(printed)
    assert "Xk7Long" not in masked and "Secret" not in masked


def test_it_masks_a_secret_holding_control_characters_where_they_are_printed_as_escapes():
    secret = "tab\there-and\nnewline\x1bescape"
    mask = Masker([secret])

    for printed in (
        repr(secret),  # Python
        '"tab\\there-and\\nnewline\\u001bescape"',  # JSON
        "tab\\there-and\\nnewline\\033escape",  # printf %q-ish, octal
        "tab\there-and",  # the first line as it is
    ):
        assert "here-and" not in mask(printed), printed
    assert "newline" not in mask("newline\x1bescape")


def test_printed_forms_keep_the_old_ones():
    forms = set(printed_forms("line-one\nline-two"))
    assert {"line-one\nline-two", "line-one", "line-two"} <= forms
    assert set(base64_forms("line-one")) <= forms
