"""deployer.cli.terminal_safe: what the CLI prints from the server keeps its colours and
loses every other terminal control sequence."""

from __future__ import annotations

import pytest

from deployer.cli import table, terminal_safe


@pytest.mark.parametrize(
    ("hostile", "shown"),
    [
        ("\x1b]0;pwned\x07title", "title"),  # OSC window title, BEL-terminated
        ("\x1b]2;pwned\x1b\\title", "title"),  # OSC, ST-terminated
        ("\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\", "click"),  # hyperlink
        ("\x1b]52;c;cHduZWQ=\x07copied", "copied"),  # clipboard write
        ("a\x1b[2Jb\x1b[Hc\x1b[3;4Hd\x1b[5Ae\x1b[Kf", "abcdef"),  # clear, cursor, erase
        ("\x1b[?1049hscreen\x1b[?25l", "screen"),  # private modes
        ("\x1bPq#0;2;0;0;0\x1b\\sixel", "sixel"),  # DCS
        ("\x1b_apc\x1b\\\x1b^pm\x1b\\\x1bXsos\x1b\\x", "x"),  # APC, PM, SOS
        ("\x1bcreset\x1b7\x1b8\x1bM", "reset"),  # RIS, save/restore cursor, reverse index
        ("\x9b2Jc1\x9d0;t\x9c\x84\x85", "2Jc10;t"),  # C1 controls, 8-bit CSI and OSC
        ("bell\x07back\x08\x08space\rcarriage", "bellbackspacecarriage"),
        ("nul\x00del\x7fvt\x0bff\x0c", "nuldelvtff"),
        ("unterminated\x1b]0;title with no end", "unterminated"),
        ("lone escape\x1b", "lone escape"),
        ("\x1b[>4;2mkeys\x1b[?1m", "keys"),  # not SGR though it ends in m
    ],
)
def test_it_drops_every_control_sequence(hostile, shown):
    assert terminal_safe(hostile) == shown


@pytest.mark.parametrize(
    "kept",
    [
        "\x1b[1;31mred\x1b[0m",
        "\x1b[38;5;208morange\x1b[m",
        "\x1b[38:2:10:20:30mtrue colour\x1b[39m",
        "tab\tand\nnewline",
        "é ü 日本語 🙂",
    ],
)
def test_it_keeps_colours_tabs_newlines_and_text(kept):
    assert terminal_safe(kept) == kept


def test_an_unterminated_osc_does_not_swallow_the_next_lines():
    assert terminal_safe("a\x1b]0;title\nnext line") == "a\nnext line"


def test_a_table_measures_names_without_their_control_sequences():
    shown = table([("\x1b]0;pwned\x07web1", "ok"), ("web22", "ok")], ["SERVER", "STATE"])
    lines = shown.splitlines()
    assert lines[2] == "web1    ok"
    assert lines[3] == "web22   ok"
