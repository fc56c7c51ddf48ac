"""The shell's logic, in-process: scripts fed through given streams, dot-commands, completion.

The real terminal front end (prompt_toolkit in a pseudo-terminal) is tested in test_shell_pty.py.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

import proxy
from proxy.tools.cli import main
from proxy.tools.shell import dotcommands
from proxy.tools.shell.repl import (
    CtrlC,
    Shell,
    ShellCompleter,
    default_history_path,
    is_blank,
    is_complete,
    run_shell,
    split_statements,
)

NOTES = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);\n"


class Session:
    """A Shell on a cluster with captured output: feed(script) returns (stdout, stderr) of that call."""

    def __init__(self, cluster: proxy.Cluster):
        self.cluster = cluster
        self.out, self.err = io.StringIO(), io.StringIO()
        self.shell = Shell(cluster, stdout=self.out, stderr=self.err)

    def feed(self, script: str) -> tuple[str, str]:
        out_at, err_at = self.out.tell(), self.err.tell()
        self.shell.run_script(io.StringIO(script))
        return self.out.getvalue()[out_at:], self.err.getvalue()[err_at:]

    def close(self) -> None:
        self.shell.close()


@pytest.fixture
def session(cluster: proxy.Cluster) -> Session:
    s = Session(cluster)
    yield s
    s.close()


def run_script(directory: Path, script: str, **options: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_shell(directory, stdin=io.StringIO(script), stdout=out, stderr=err, interactive=False,
                     **options)  # type: ignore[arg-type]
    return code, out.getvalue(), err.getvalue()


# -- reading input ------------------------------------------------------------------------------

def test_enter_runs_input_only_when_sqlite_says_it_is_complete() -> None:
    assert is_complete("SELECT 1;")
    assert is_complete("SELECT 1; -- trailing comment")
    assert is_complete(".tables")
    assert is_complete("")
    assert is_complete("-- only a comment")
    assert not is_complete("SELECT 1")
    assert not is_complete("SELECT ';")
    assert not is_complete("CREATE TRIGGER t AFTER INSERT ON a BEGIN SELECT 1;")
    assert is_blank("  -- a\n/* b */\n")
    assert not is_blank("/* b */ SELECT 1")


def test_statements_are_split_where_sqlite_ends_them() -> None:
    assert split_statements("SELECT 1; SELECT ';'; -- done\n") == ["SELECT 1;", "SELECT ';';"]
    trigger = "CREATE TRIGGER t AFTER INSERT ON a BEGIN SELECT 1; SELECT 2; END;"
    assert split_statements(trigger + " SELECT 3") == [trigger, "SELECT 3"]


def test_script_from_stdin_prints_only_results(cluster: proxy.Cluster) -> None:
    script = NOTES + "INSERT INTO notes(body) VALUES ('hello');\n.mode csv\nSELECT * FROM notes;\n"
    code, out, err = run_script(cluster.directory, script)
    assert code == 0, err
    assert out == "id,body\n1,hello\n"  # clean data: the node lines went to stderr
    assert "replproxy>" not in out + err and "...>" not in out + err


def test_statements_may_span_lines_and_share_them(session: Session) -> None:
    out, err = session.feed(".mode csv\nSELECT\n  1\n  AS a;\nSELECT 2 AS b; SELECT 3 AS c;\n"
                            "-- a comment alone is skipped\nSELECT 4 AS d\n")
    assert out.split() == ["a", "1", "b", "2", "c", "3", "d", "4"], err
    assert "Error" not in err


def test_cli_shell_reads_a_script_from_stdin(cluster: proxy.Cluster) -> None:
    result = CliRunner().invoke(main, ["shell", str(cluster.directory), "--mode", "json"],
                                input=NOTES + "INSERT INTO notes(body) VALUES ('x');\nSELECT body FROM notes;\n")
    assert result.exit_code == 0, result.output
    assert '[{"body": "x"}]' in result.output


# -- where results come from --------------------------------------------------------------------

def test_every_result_says_which_node_served_it_and_at_which_lsn(session: Session) -> None:
    _, err = session.feed(NOTES + "INSERT INTO notes(body) VALUES ('a'), ('b');\n")
    assert "-- node1 (leader) at LSN 1" in err
    assert "-- 2 rows changed · node1 (leader) at LSN 2" in err
    session.cluster.wait_for_catchup(10)
    out, err = session.feed("SELECT * FROM notes;\n")
    assert "| a    |" in out
    assert re.search(r"^-- 2 rows · node[23] \(follower\) at LSN 2$", err, re.M), err


def test_nodeinfo_off_hides_the_node_line(session: Session) -> None:
    _, err = session.feed(".nodeinfo off\nSELECT 1;\n")
    assert err == ""
    _, err = session.feed(".nodeinfo on\nSELECT 1;\n")
    assert "-- 1 row ·" in err


def test_a_transaction_is_open_until_commit(session: Session) -> None:
    _, err = session.feed(NOTES + "BEGIN;\nINSERT INTO notes(body) VALUES ('t');\n")
    assert "transaction open" in err.splitlines()[-1]
    _, err = session.feed("COMMIT;\n")
    assert "node1 (leader) at LSN 2" in err


# -- errors -------------------------------------------------------------------------------------

def test_errors_print_sqlite_message_and_the_script_goes_on(cluster: proxy.Cluster) -> None:
    script = "SELECT * FROM nope;\nSELECT 1 AS ok;\nSELECT 2 AS skipped, nope; SELECT 3 AS also_skipped;\n"
    code, out, err = run_script(cluster.directory, script + "SELECT 4 AS last;\n")
    assert "Error in stdin line 1: no such table: nope" in err
    assert "Error in stdin line 3: no such column: nope" in err
    assert "ok" in out and "last" in out
    assert "skipped" not in out  # the rest of a failing input is not run, as in sqlite3
    assert code == 1  # a script with errors fails


def test_integrity_errors_keep_sqlite_words(session: Session) -> None:
    _, err = session.feed(NOTES + "INSERT INTO notes VALUES (1, 'a');\nINSERT INTO notes VALUES (1, 'b');\n")
    assert "UNIQUE constraint failed: notes.id" in err


def test_unknown_ambiguous_and_misused_dot_commands(session: Session) -> None:
    _, err = session.feed(".frobnicate\n.t\n.pause\n.headers maybe\n")
    assert "unknown dot-command .frobnicate" in err
    assert "ambiguous dot-command .t: .tables, .timer" in err
    assert "usage: .pause NODE" in err
    assert "expected on or off" in err
    assert session.shell.errors == 4


def test_dot_commands_may_be_abbreviated(session: Session) -> None:
    out, _ = session.feed(NOTES + ".sch\n")
    assert out == NOTES


# -- the registry and .help ---------------------------------------------------------------------

def test_help_lists_every_registered_command_with_its_docstring(session: Session) -> None:
    out, _ = session.feed(".help\n")
    names = {cmd.name for cmd in dotcommands.commands()}
    assert {"help", "tables", "schema", "nodes", "consistency", "format", "log", "pause", "resume",
            "verify", "failover", "mode", "headers", "timer", "read", "output", "quit"} <= names
    for cmd in dotcommands.commands():
        line = next(line for line in out.splitlines() if line.startswith(cmd.usage + " "))
        assert cmd.summary.rstrip(".") in line
        assert cmd.help, f".{cmd.name} has no docstring"
    assert "also .exit" in out
    detail, _ = session.feed(".help consistency\n")
    assert detail.startswith(".consistency ?LEVEL?\n")
    assert "eventual" in detail and "read-your-writes" in detail


# -- schema -------------------------------------------------------------------------------------

def test_tables_and_schema_show_user_objects_only(session: Session) -> None:
    session.feed(NOTES + "CREATE INDEX notes_body ON notes(body);\nCREATE VIEW v AS SELECT body FROM notes;\n"
                 "CREATE TABLE tags(name TEXT);\n")
    out, _ = session.feed(".tables\n")
    assert out.split() == ["notes", "tags", "v"]
    out, _ = session.feed(".schema notes\n")
    assert out == NOTES + "CREATE INDEX notes_body ON notes(body);\n"
    out, _ = session.feed(".schema\n")
    assert "_replproxy" not in out and "CREATE TABLE tags(name TEXT);" in out
    out, _ = session.feed(".tables t%\n")
    assert out.split() == ["tags"]


# -- replication --------------------------------------------------------------------------------

def nodes_table(session: Session) -> dict[str, dict[str, str]]:
    out, _ = session.feed(".mode csv\n.nodes\n.mode table\n")
    return {row["node"]: row for row in csv.DictReader(io.StringIO(out))}


def test_nodes_show_role_position_lag_and_state(session: Session) -> None:
    session.feed(NOTES + ".wait\n.pause node3\nINSERT INTO notes(body) VALUES ('x');\n.wait\n")
    nodes = nodes_table(session)
    assert nodes["node1"]["role"] == "leader" and nodes["node1"]["applied LSN"] == "2"
    assert nodes["node2"]["state"] == "ok" and nodes["node2"]["lag"] == "0"
    assert nodes["node3"]["state"] == "paused" and nodes["node3"]["applied LSN"] == "1"
    assert nodes["node3"]["lag"] == "1" and float(nodes["node3"]["lag (s)"]) >= 0
    _, err = session.feed(".resume node3\n.wait\n")
    assert "node3 resumed" in err and "node2, node3 at LSN 2" in err
    assert nodes_table(session)["node3"]["state"] == "ok"


def test_pause_refuses_the_leader_and_unknown_nodes(session: Session) -> None:
    _, err = session.feed(".pause node1\n.pause node9\n")
    assert "node1 is the leader" in err
    assert "no node named 'node9'" in err


def test_session_reads_your_write_and_eventual_may_miss_it(session: Session) -> None:
    """The replication chapter's anomaly: with both followers behind, `session` consistency still
    shows you your own write (from the leader); `eventual` reads a stale follower and it is gone."""
    session.feed(NOTES + ".wait\n.pause node2\n.pause node3\n")
    out, err = session.feed(".consistency\nINSERT INTO notes(body) VALUES ('mine');\n"
                            ".mode csv\nSELECT count(*) AS n FROM notes;\n")
    assert out.splitlines()[0] == "consistency session"
    assert out.splitlines()[-1] == "1"
    assert "-- 1 row · node1 (leader) at LSN 2" in err
    out, err = session.feed(".consistency eventual\nSELECT count(*) AS n FROM notes;\n")
    assert session.shell.conn.consistency == "eventual"
    assert out.splitlines()[0] == "consistency eventual"
    assert out.splitlines()[-1] == "0"  # the write is missing
    assert re.search(r"-- 1 row · node[23] \(follower\) at LSN 1$", err.strip())
    session.feed(".resume node2\n.resume node3\n.wait\n")
    out, _ = session.feed("SELECT count(*) AS n FROM notes;\n")
    assert out.splitlines()[-1] == "1"


def test_consistency_rejects_unknown_levels(session: Session) -> None:
    _, err = session.feed(".consistency sometimes\n")
    assert "unknown consistency level 'sometimes'" in err
    assert session.shell.conn.consistency == "session"
    out, _ = session.feed(".consistency strong\n")
    assert out == "consistency strong\n"


def test_format_shows_the_log_format_and_row_image(make_cluster: Callable[..., proxy.Cluster]) -> None:
    s = Session(make_cluster("minimal", row_image="minimal"))
    try:
        out, _ = s.feed(".format\n")
    finally:
        s.close()
    assert "log format   row" in out
    assert "row image    minimal (patchsets" in out
    assert "leader full, followers normal" in out


def test_log_decodes_the_last_entries(session: Session) -> None:
    session.feed(NOTES + "INSERT INTO notes(body) VALUES ('first');\nINSERT INTO notes(body) VALUES ('second');\n")
    out, _ = session.feed(".log 1\n")
    assert out.startswith("# LSN 3  epoch 1  ")
    assert "INSERT notes: id=2 body='second'" in out and "first" not in out
    out, _ = session.feed(".log\n")
    assert [line.split()[2] for line in out.splitlines() if line.startswith("# LSN")] == ["1", "2", "3"]
    assert "SQL CREATE TABLE notes" in out


def test_verify_compares_nodes_and_reports_a_paused_follower(session: Session) -> None:
    out, _ = session.feed(NOTES + "INSERT INTO notes(body) VALUES ('v');\n.verify\n")
    assert out.strip() == "OK: 3 nodes identical at LSN 2 (1 tables compared)"
    out, _ = session.feed(".wait\n.pause node3\nINSERT INTO notes(body) VALUES ('w');\n.verify\n")
    # A paused follower is not compared (it is not different): issue 14.
    assert "COULD NOT COMPARE at LSN 3" in out
    assert "node3: not compared: behind: applied LSN 2 of 3 (paused" in out
    session.feed(".resume node3\n")


def test_failover_promotes_a_follower_and_writes_follow(session: Session) -> None:
    session.feed(NOTES + "INSERT INTO notes(body) VALUES ('a');\n")
    out, err = session.feed(".failover node2\n")
    assert "node2 is the leader at epoch 2" in out, err
    assert session.cluster.leader == "node2"
    assert proxy.Cluster(session.cluster.directory, replicate=False).leader == "node2"
    out, _ = session.feed("INSERT INTO notes(body) VALUES ('b');\n.verify\n")
    assert "OK: 3 nodes identical at LSN 3" in out


# -- display ------------------------------------------------------------------------------------

def test_modes_and_headers(session: Session) -> None:
    session.feed(NOTES + "INSERT INTO notes(body) VALUES ('a');\n")
    out, _ = session.feed(".mode json\nSELECT * FROM notes;\n")
    assert json.loads(out) == [{"id": 1, "body": "a"}]
    out, _ = session.feed(".mode line\nSELECT * FROM notes;\n")
    assert out == "  id = 1\nbody = a\n"
    out, _ = session.feed(".mode box\nSELECT * FROM notes;\n")
    assert out.splitlines()[0].startswith("┌")
    out, _ = session.feed(".mode csv\n.headers off\nSELECT * FROM notes;\n")
    assert out == "1,a\n"
    out, _ = session.feed(".mode\n")
    assert out == "mode csv\n"
    _, err = session.feed(".mode fancy\n")
    assert "unknown mode 'fancy'" in err


def test_timer_reports_run_time(session: Session) -> None:
    _, err = session.feed(".timer on\nSELECT 1;\n")
    assert re.search(r"^Run Time: real \d+\.\d{3}$", err, re.M)
    _, err = session.feed(".timer off\nSELECT 1;\n")
    assert "Run Time" not in err


def test_read_runs_a_file_and_output_redirects_results(session: Session, tmp_path: Path) -> None:
    script = tmp_path / "setup.sql"
    script.write_text(NOTES + "INSERT INTO notes(body) VALUES ('from file');\n.mode csv\n")
    results = tmp_path / "out.csv"
    out, err = session.feed(f".read {script}\n.output {results}\nSELECT body FROM notes;\n.output\nSELECT 'screen';\n")
    assert results.read_text() == "body\nfrom file\n"
    assert out == "'screen'\nscreen\n"
    assert "1 row ·" in err  # node information stays on the screen
    _, err = session.feed(f".read {tmp_path / 'missing.sql'}\n")
    assert "cannot read" in err


def test_read_reports_the_file_and_line_of_an_error(session: Session, tmp_path: Path) -> None:
    script = tmp_path / "bad.sql"
    script.write_text("SELECT 1;\n\nSELECT nope;\n")
    _, err = session.feed(f".read {script}\n")
    assert f"Error in {script} line 3: no such column: nope" in err


def test_read_of_itself_stops(session: Session, tmp_path: Path) -> None:
    script = tmp_path / "loop.sql"
    script.write_text(f".read {script}\n")
    _, err = session.feed(f".read {script}\n")
    assert "nested more than" in err


def test_leaving_rolls_back_an_open_transaction_and_names_paused_followers(cluster: proxy.Cluster) -> None:
    code, _, err = run_script(cluster.directory, NOTES + ".wait\n.pause node3\nBEGIN;\n"
                              "INSERT INTO notes(body) VALUES ('uncommitted');\n")
    assert code == 0
    assert "note: the open transaction is rolled back" in err
    assert "note: node3 stays paused" in err
    code, out, _ = run_script(cluster.directory, ".resume node3\n.mode csv\nSELECT count(*) AS n FROM notes;\n")
    assert out == "n\n0\n"


def test_quit_and_exit_stop_the_script(cluster: proxy.Cluster) -> None:
    for word in ("quit", "exit"):
        code, out, _ = run_script(cluster.directory, f"SELECT 'before';\n.{word}\nSELECT 'after';\n")
        assert code == 0 and "before" in out and "after" not in out


def test_ctrl_c_interrupts_a_running_statement(session: Session) -> None:
    shell = session.shell
    shell.ctrl_c = CtrlC(shell.interrupt)
    armed = shell.ctrl_c._armed

    def press_ctrl_c() -> None:
        armed.wait(10)  # the statement is running
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c;\n"
    try:
        _, err = session.feed(endless)
        assert "Error in stdin line 1: interrupted" in err
        out, _ = session.feed("SELECT 'still here';\n")
        assert "still here" in out
    finally:
        shell.ctrl_c.close()
        shell.ctrl_c = None


# -- completion ---------------------------------------------------------------------------------

def complete(session: Session, text: str, tab: bool = False) -> list[str]:
    completer = ShellCompleter(session.shell)
    event = CompleteEvent(completion_requested=tab)
    return [c.text for c in completer.get_completions(Document(text), event)]


def test_completion_of_keywords_tables_columns_and_dot_commands(session: Session) -> None:
    session.feed(NOTES + "CREATE TABLE tags(note_id INTEGER, label TEXT);\n")
    assert "SELECT" in complete(session, "SEL")
    assert "select" in complete(session, "sel")  # follows the user's case
    assert complete(session, "SELECT * FROM n") == ["notes"]
    assert complete(session, "SELECT * FROM ", tab=True) == ["notes", "tags"]
    assert complete(session, "SELECT b")[0] == "body"
    assert complete(session, "SELECT la")[0] == "label"
    assert complete(session, "SELECT t.") == []  # no table t
    assert complete(session, "SELECT tags.") == ["note_id", "label"]
    assert complete(session, "SELECT * FROM notes n WHERE n.") == ["id", "body"]
    assert "count" in complete(session, "SELECT cou")  # SQLite's functions
    assert complete(session, ".sch") == [".schema"]
    assert complete(session, ".pause n") == ["node2", "node3"]
    assert complete(session, ".mode c") == ["csv"]
    assert complete(session, ".consistency ev") == ["eventual"]
    assert complete(session, ".schema ta") == ["tags"]
    assert complete(session, "SELECT ") == []  # no popup on every space while typing


# -- starting the shell -------------------------------------------------------------------------

def test_missing_directory_needs_create_when_not_interactive(tmp_path: Path) -> None:
    target = tmp_path / "new"
    code, _, err = run_script(target, "SELECT 1;\n")
    assert code == 1
    assert "no cluster at" in err and "--create" in err
    assert not target.exists()


def test_create_makes_a_demo_cluster_of_three_nodes(tmp_path: Path) -> None:
    target = tmp_path / "new"
    code, out, err = run_script(target, ".nodes\n", create=True)
    assert code == 0, err
    assert "Created a cluster in" in err
    assert [line.split("|")[1].strip() for line in out.splitlines()[3:6]] == ["node1", "node2", "node3"]
    assert (target / "cluster.toml").exists()


def test_interactive_offer_can_be_declined(tmp_path: Path) -> None:
    target = tmp_path / "new"
    err = io.StringIO()
    code = run_shell(target, stdin=io.StringIO("n\n"), stdout=io.StringIO(), stderr=err, interactive=True)
    assert code == 1
    assert "Create a demo cluster there (a leader and two followers)? [Y/n]" in err.getvalue()
    assert not target.exists()


def test_a_directory_with_other_files_is_not_taken_over(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    code, _, err = run_script(tmp_path, "SELECT 1;\n", create=True)
    assert code == 1 and "cluster.toml is missing" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_history_location_can_be_overridden(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("REPLPROXY_HISTORY", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_history_path() == tmp_path / "data" / "replproxy" / "shell_history"
    monkeypatch.setenv("REPLPROXY_HISTORY", str(tmp_path / "h"))
    assert default_history_path() == tmp_path / "h"


# -- the documentation --------------------------------------------------------------------------

def test_the_transcript_in_docs_shell_md_still_holds(session: Session) -> None:
    """Replays what docs/shell.md shows being typed and compares every `--` line it shows."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "shell.md").read_text(encoding="utf-8")
    walk = doc[doc.index("## A walk through replication lag"):doc.index("## Scripts")]
    lines = [line for block in re.findall(r"```\n(.*?)```", walk, re.S) for line in block.splitlines()]
    typed = [line[len("replproxy> "):] for line in lines if line.startswith("replproxy> ")]
    assert len(typed) > 15
    _, err = session.feed("\n".join(typed) + "\n")

    def said(text: list[str]) -> list[str]:
        # Which follower serves a read when both qualify is the router's choice.
        return [re.sub(r"node[23] \(follower\)", "node2|3 (follower)", line)
                for line in text if line.startswith("-- ")]

    assert said(err.splitlines()) == said(lines)
    assert "Error" not in err
