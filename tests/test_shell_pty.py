"""The real `replproxy shell` in a pseudo-terminal: typing SQL and dot-commands and reading the screen.

prompt_toolkit redraws with escape sequences, so the test waits for lines the shell itself prints
(results, the node/LSN line, messages), each with a timeout.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from helpers import HANG, replproxy_command

pexpect = pytest.importorskip("pexpect")

TIMEOUT = HANG  # each expect: only bounds a hang (a busy machine starts the shell slowly)
UP = "\x1b[A"
ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c;"


def spawn(directory: Path, history: Path, *options: str, **environ: str) -> pexpect.spawn:
    command, *args = replproxy_command()
    env = dict(os.environ, TERM="xterm", HOME=str(history.parent), REPLPROXY_HISTORY=str(history),
               PROMPT_TOOLKIT_NO_CPR="1", **environ)  # a pty that never answers cursor-position requests
    return pexpect.spawn(command, [*args, "shell", str(directory), *options], env=env, dimensions=(30, 120),
                         use_poll=True, encoding="utf-8", timeout=TIMEOUT)


def test_shell_in_a_terminal(tmp_path: Path) -> None:
    directory, history = tmp_path / "demo", tmp_path / "history"
    child = spawn(directory, history)
    try:
        # A directory without a cluster: the shell offers to create one.
        child.expect_exact("Create a demo cluster there (a leader and two followers)? [Y/n]")
        child.sendline("y")
        child.expect_exact("Created a cluster in")
        child.expect_exact("replproxy>")

        # Enter before the `;` continues the statement on a new line.
        child.sendline("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
        child.expect_exact("...>")
        child.sendline(";")
        child.expect_exact("-- node1 (leader) at LSN 1")

        # Syntax highlighting: the keyword is echoed in a colour of its own.
        child.send("SELECT")
        child.expect(r"\x1b\[[0-9;]*38;5;\d+[0-9;]*mSELECT")
        # Tab completes the table name: `no` alone would fail with "no such table".
        child.send(" body FROM no")
        child.send("\t")
        child.sendline(";")
        child.expect(r"-- 0 rows · node\d \((leader|follower)\)")

        child.sendline("INSERT INTO notes(body) VALUES ('hello');")
        child.expect_exact("-- 1 row changed · node1 (leader) at LSN 2")
        child.sendline(".wait")
        child.expect_exact("node2, node3 at LSN 2")
        child.sendline("SELECT body FROM notes;")
        child.expect(r"\| hello \|")
        child.expect(r"-- 1 row · node[23] \(follower\) at LSN 2")

        # Dot-commands complete too.
        child.send(".pau")
        child.send("\t")
        child.sendline(" node3")
        child.expect_exact("node3 paused")
        child.sendline(".nodes")
        child.expect(r"\| node3 \| follower \| 2 +\| 0 +\| 0\.0 +\| paused \|")

        # Ctrl-C drops the input being typed; the shell carries on.
        child.send("SELECT nonsense")
        child.expect_exact("nonsense")  # echoed: the prompt has the terminal in raw mode
        child.sendcontrol("c")
        child.sendline("SELECT 'after' || ' ctrl-c';")
        index = child.expect(["no such column: nonsense", r"\| after ctrl-c +\|"])
        assert index == 1, "Ctrl-C did not drop the typed input"

        # Ctrl-C also stops a statement that is running.
        child.sendline(ENDLESS)
        # The prompt has let the line go (bracketed paste off): the terminal is leaving raw mode,
        # where a Ctrl-C would be a keystroke nobody reads, for the mode where it is a signal.
        child.expect_exact("\x1b[?2004l")
        with pytest.raises(pexpect.TIMEOUT):
            child.expect_exact("Error: interrupted", timeout=0.5)  # it really runs
        # Ctrl-C until it is said (one sent while the terminal was still switching is only a byte).
        deadline = time.monotonic() + TIMEOUT
        while True:
            child.sendcontrol("c")
            if child.expect_exact(["Error: interrupted", pexpect.TIMEOUT], timeout=1) == 0:
                break
            assert time.monotonic() < deadline, "Ctrl-C never stopped the running statement"

        child.sendline(".resume node3")
        child.expect_exact("node3 resumed")
        # Ctrl-D leaves. (Sent before the prompt is back, the terminal itself would swallow it.)
        child.expect_exact("replproxy>")
        child.sendcontrol("d")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0

    # History is kept across sessions: Up recalls the last input.
    saved = history.read_text()
    assert "+CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)\n+;" in saved
    assert "+.resume node3" in saved
    child = spawn(directory, history)
    try:
        child.expect_exact("replproxy>")
        child.send(UP)
        child.expect_exact(".resume node3")
        child.sendline("")
        child.expect_exact("node3 resumed")
        child.sendline(".quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


HUNDRED = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100) SELECT x AS n FROM c;"


def test_pager_for_tall_results_and_once_in_a_terminal(tmp_path: Path) -> None:
    """A result taller than the terminal (30 rows here) goes through $PAGER; a short one, one with
    `.pager off` and one sent by `.once` to a file do not."""
    pager = tmp_path / "pager.sh"
    pager.write_text("#!/bin/sh\necho '<<paged>>'\ncat\necho '<</paged>>'\n")
    pager.chmod(0o755)
    once = tmp_path / "once.txt"
    child = spawn(tmp_path / "demo", tmp_path / "history", "--create", PAGER=str(pager))
    try:
        child.expect_exact("replproxy>")
        child.sendline(HUNDRED)
        child.expect_exact("<<paged>>")
        child.expect(r"\| 100 \|")
        child.expect_exact("<</paged>>")
        child.expect_exact("-- 100 rows")  # the node line comes after the pager, on the screen

        child.sendline("SELECT 'short' AS s;")
        child.expect_exact("-- 1 row")
        assert "<<paged>>" not in child.before and "| short |" in child.before

        child.sendline(".pager off")
        child.expect_exact("replproxy>")
        child.sendline(HUNDRED)
        child.expect_exact("-- 100 rows")
        assert "<<paged>>" not in child.before and "| 100 |" in child.before

        child.sendline(".pager on")
        child.expect_exact("replproxy>")
        child.sendline(f".once {once}")
        child.expect_exact("replproxy>")
        child.sendline(HUNDRED)
        child.expect_exact("-- 100 rows")
        assert "<<paged>>" not in child.before and "| 100 |" not in child.before  # in the file only
        child.sendline("SELECT 'after once' AS s;")
        child.expect(r"\| after once \|")  # the next result is on the screen again
        child.expect_exact("-- 1 row")

        child.expect_exact("replproxy>")
        child.sendcontrol("d")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    text = once.read_text()
    assert text.startswith("+-----+\n| n   |\n") and "| 100 |" in text and "after once" not in text
