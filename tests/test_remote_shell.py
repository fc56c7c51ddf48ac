"""`replproxy shell` on a distributed cluster with no local cluster: given the cluster's URL, or a
follower's directory (docs/shell.md). The nodes are real `replproxy serve` processes on a real NATS
server; the shell runs as a real process, in a pseudo-terminal or on a script piped to stdin."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest
from distnodes import Cluster, Node
from helpers import HANG, replproxy_command, run_replproxy
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

import proxy
from proxy.tools.shell.repl import Shell, ShellCompleter

pexpect = pytest.importorskip("pexpect")

SCHEMA = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);\n"



def _url(dist: Cluster) -> str:
    return f"{dist.nats}/{dist.name}"


def _two(dist: Cluster) -> tuple[Node, Node]:
    """A leader `a` and a follower `b`, each served by its own process."""
    a = dist.init("a").serve()
    dist.wait_serving(a)
    b = dist.join("b").serve()
    dist.wait_reporting(a, b)
    return a, b


def _shell(target: object, script: str) -> tuple[int, str, str]:
    done = run_replproxy("shell", target, input=script, check=False)
    return done.returncode, done.stdout, done.stderr


def test_shell_on_a_url_in_a_terminal(dist: Cluster, tmp_path: Path) -> None:
    _two(dist)
    history = tmp_path / "history"
    command, *args = replproxy_command()
    env = dict(os.environ, TERM="xterm", HOME=str(tmp_path), REPLPROXY_HISTORY=str(history),
               PROMPT_TOOLKIT_NO_CPR="1")  # a pty that never answers cursor-position requests
    child = pexpect.spawn(command, [*args, "shell", _url(dist)], env=env, dimensions=(30, 120), use_poll=True,
                          encoding="utf-8", timeout=HANG)
    try:
        # No cluster is offered to be created: the banner names the distributed cluster.
        child.expect_exact(f"replproxy shell on {_url(dist)}")
        child.expect_exact("distributed cluster test: leader a, followers b")
        child.expect_exact("replproxy>")

        child.sendline(SCHEMA.strip())
        child.expect_exact("-- a (leader) at LSN 1")
        child.sendline("BEGIN;")
        child.expect_exact("-- a (leader), transaction open")
        child.sendline("INSERT INTO notes(body) VALUES ('one');")
        child.expect_exact("-- 1 row changed · a (leader), transaction open")
        child.sendline("INSERT INTO notes(body) VALUES ('two');")
        child.expect_exact("-- 1 row changed · a (leader), transaction open")
        child.sendline("COMMIT;")
        child.expect_exact("-- a (leader) at LSN 2")

        # Tab completes the table name from the schema read over NATS (`no` alone is no table).
        child.send("SELECT body FROM no")
        child.send("\t")
        child.sendline(" ORDER BY id;")
        child.expect(r"\| one +\|")
        child.expect(r"\| two +\|")
        # Session consistency: the follower serves the read once it has the commit (else the leader).
        child.expect(r"-- 2 rows · (b \(follower\) at LSN 2|a \(leader\))")

        child.sendline(".tables")
        child.expect_exact("notes\r\n")  # .tables echoes no table name: this is its output
        child.sendline(".failover")
        child.expect_exact(".failover works on an embedded cluster only")
        child.expect_exact("the leader's lease expires")
        child.sendline(".stop b")
        child.expect_exact("stop that node's `replproxy serve` on its machine")

        child.expect_exact("replproxy>")
        child.sendcontrol("d")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before


def test_a_script_on_stdin_against_the_url_and_from_a_followers_directory(dist: Cluster) -> None:
    a, b = _two(dist)
    code, out, err = _shell(_url(dist), SCHEMA + "BEGIN;\nINSERT INTO notes(body) VALUES ('one');\n"
                            "INSERT INTO notes(body) VALUES ('two');\nCOMMIT;\n.wait 60\n.mode csv\n"
                            "SELECT body FROM notes ORDER BY id;\n.tables\n.schema notes\n.nodes\n.log 1\n.verify\n")
    assert code == 0, err
    assert "-- a (leader) at LSN 1" in err
    assert "-- a (leader) at LSN 2" in err  # the commit: one log entry for the transaction
    assert "b at LSN 2" in err  # .wait: the follower reports the stream's last LSN
    assert re.search(r"-- 2 rows · b \(follower\) at LSN 2", err), err
    assert "body\none\ntwo\n" in out
    assert "\nnotes\n" in out
    assert "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);" in out
    assert "_replproxy" not in out  # replproxy's internal tables are not the user's
    assert re.search(r"\nb,follower,2,0,running,", out), out  # .nodes, from the nodes' published positions
    assert "# LSN 2 " in out and "INSERT notes: id=2 body='two'" in out  # .log 1
    assert "OK: 2 nodes identical at LSN 2" in out

    # From the follower's directory: reads go to that follower, writes to the leader; no local cluster.
    code, out, err = _shell(b.directory, ".mode csv\nINSERT INTO notes(body) VALUES ('three');\n.wait 60\n"
                            "SELECT count(*) AS n FROM notes;\n.tables\n")
    assert code == 0, err
    assert "-- 1 row changed · a (leader) at LSN 3" in err
    assert "-- 1 row · b (follower) at LSN 3" in err
    assert out == "n\n3\nnotes\n"

    # An embedded-only dot-command is refused, the script goes on and the exit status says it failed.
    code, out, err = _shell(b.directory, ".pause b\nSELECT 'after';\n")
    assert code == 1
    assert ("Error in stdin line 1: .pause works on an embedded cluster only, and "
            f"{b.directory} is a distributed cluster") in err
    assert "replproxy serve" in err and "after" in out

    # The leader's own directory still opens its file as an embedded cluster does.
    code, out, err = _shell(a.directory, ".mode csv\n.nodes\nSELECT count(*) AS n FROM notes;\n")
    assert code == 0, err
    assert "applied LSN" in out and out.endswith("n\n3\n")


def test_a_url_of_a_cluster_that_does_not_exist(dist: Cluster) -> None:
    _two(dist)
    code, out, err = _shell(f"{dist.nats}/nosuch", "SELECT 1;\n")
    assert code == 1
    assert out == ""
    assert "Error: no replproxy cluster named 'nosuch'" in err
    assert "Create a demo cluster" not in err


def test_the_shell_object_on_a_remote_connection(dist: Cluster) -> None:
    """In-process: status bar, banner and completion come from the cluster over NATS."""
    a, b = _two(dist)
    url = _url(dist)
    out, err = io.StringIO(), io.StringIO()
    shell = Shell(None, stdout=out, stderr=err, conn=proxy.connect(url, autocommit=True), target=url)
    try:
        shell.run_script(io.StringIO(SCHEMA + "INSERT INTO notes(body) VALUES ('one');\n"))
        assert shell.errors == 0, err.getvalue()
        assert re.fullmatch(r" a\* LSN \d+  b LSN \d+  │ consistency session  │ mode table  │ .help", shell.toolbar())
        assert shell.banner().startswith(f"replproxy shell on {url}\ndistributed cluster test: leader a, "
                                         "followers b; row log, async replication; consistency session\n")

        def complete(text: str) -> list[str]:
            document = Document(text, len(text))
            found = ShellCompleter(shell).get_completions(document, CompleteEvent(completion_requested=True))
            return [c.text for c in found]

        assert complete("SELECT notes.b") == ["body"]  # columns, read through the connection
        assert "notes" in complete("SELECT * FROM no")
        assert "lower" in complete("SELECT low")  # SQLite's functions
        with pytest.raises(ValueError):
            Shell(None, stdout=out, stderr=err)  # no cluster and nothing remote to use instead
    finally:
        shell.close()
