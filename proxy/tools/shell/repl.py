"""`replproxy shell`: an interactive SQL shell on a cluster that shows where every result came from.

`Shell` holds the logic and writes to the streams it is given, so it runs the same on a terminal,
on a script piped to stdin and in tests. `run_shell` opens (or offers to create) the cluster and
picks the front end: prompt_toolkit when stdin is a terminal, plain line reading otherwise.
Given a cluster URL or a distributed follower's directory, the shell has no local cluster: its
connection is the remote driver (proxy/remote/client.py) and the nodes are seen through
proxy/dist/report.py, over NATS.
Results go to stdout (or the `.output` file, or for one input the `.once` file; on a terminal through
a pager when taller than it); the node/LSN line, timings and errors go to stderr, so
`replproxy shell DIR < script.sql > out.csv` leaves clean data in out.csv.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TextIO

import apsw
from prompt_toolkit.completion import CompleteEvent, Completer, Completion, PathCompleter
from prompt_toolkit.document import Document

import logformats

from ...cluster import Cluster
from ...driver import Connection, Cursor, analyze, connect
from ...driver.analyze import is_blank
from ...errors import Error
from ...store import config as cfg
from ...store.decode import bad_input, not_utf8
from ..render import MODES, render
from . import pager, registry
from .ctrlc import CtrlC

if TYPE_CHECKING:
    from ...remote.client import RemoteConnection, RemoteCursor

PROMPT = "replproxy> "
CONTINUATION = "...> "
HISTORY_ENV = "REPLPROXY_HISTORY"
MAX_READ_DEPTH = 16  # .read of a file that reads itself must stop somewhere


def default_history_path() -> Path:
    """Where history is kept: $REPLPROXY_HISTORY, else the user's data directory (XDG)."""
    override = os.environ.get(HISTORY_ENV)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "replproxy" / "shell_history"


# -- reading SQL --------------------------------------------------------------------------------

def is_dot_command(text: str) -> bool:
    return text.lstrip().startswith(".")


def is_complete(text: str) -> bool:
    """Whether Enter should run the input: a dot-command, nothing at all, or SQL that SQLite's
    own parser (sqlite3_complete) says ends with a `;` outside any string, comment or trigger body."""
    # The newline lets a trailing `-- comment` end, as it would in a file.
    return is_dot_command(text) or is_blank(text) or apsw.complete(text + "\n")


def split_statements(text: str) -> list[str]:
    """The statements of a complete input, split where SQLite's parser would end them (a last
    statement without `;` still runs, as in sqlite3)."""
    return [statement.strip() for statement in analyze.split_statements(text)]


# -- the shell ----------------------------------------------------------------------------------

@dataclass
class Settings:
    """What the display dot-commands change."""

    mode: str = "table"
    headers: bool = True
    timer: bool = False
    nodeinfo: bool = True
    insert_table: str = "table"  # .mode insert TABLE
    widths: list[int] = field(default_factory=list)  # .width: 0 automatic, negative right-justified
    echo: bool = False  # print each input before running it
    bail: bool = False  # a script stops at its first error
    changes: bool = False  # "changes: N   total_changes: M" after each write
    pager: bool = True  # results taller than the terminal go through $PAGER (interactive only)


class Shell:
    """The shell's state and logic, writing to the streams it is given.

    On an embedded cluster `cluster` is it. On a distributed cluster reached over NATS `cluster` is
    None, `conn` the remote connection and `target` the URL or follower's directory it was opened
    on; the schema is read through `conn`, the nodes through proxy/dist/report.py.
    """

    def __init__(self, cluster: Cluster | None, *, stdout: TextIO, stderr: TextIO,
                 conn: Connection | RemoteConnection | None = None, mode: str = "table",
                 target: str | None = None):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        if cluster is None and (conn is None or target is None):
            raise ValueError("a shell without a local cluster needs its remote connection and its target")
        self.cluster = cluster
        self.target = str(cluster.directory) if cluster is not None else str(target)
        # autocommit, like the sqlite3 shell: each statement commits unless inside BEGIN...COMMIT.
        self.conn = conn if conn is not None else connect(cluster.directory, cluster=cluster, autocommit=True)
        self.stdout = stdout
        self.stderr = stderr
        self.out: IO[str] = stdout
        self._output_file: IO[str] | None = None
        self.once: IO[str] | None = None  # .once FILE: where the next input's results go
        self.settings = Settings(mode=mode)
        self.errors = 0
        self.done = False
        self.bailing = False  # .bail on and a script failed: the scripts being read stop
        self.interactive = False  # the terminal front end runs it (a pager may be used)
        self.total_changes = 0
        self.ctrl_c: CtrlC | None = None  # set by the terminal front end: Ctrl-C stops a statement
        self._depth = 0
        self._meta: apsw.Connection | None = None
        self._meta_node: str | None = None
        self._schema_version: object = None  # PRAGMA schema_version when _columns was read
        self._columns: dict[str, list[str]] = {}
        self._functions: list[str] | None = None

    # -- writing ------------------------------------------------------------------------------

    def write(self, text: str) -> None:
        """Results: to stdout or the `.output` file."""
        self.out.write(text)
        self.out.flush()

    def result(self, text: str) -> None:
        """A result, through the pager when it is for a terminal and taller than it."""
        size = pager.screen_size(self.out) if self.interactive and self.settings.pager else None
        if size is not None and self.out is self.stdout and pager.taller_than(text, *size):
            self.stdout.flush()
            pager.page(text)
        else:
            self.write(text)

    def render(self, headers: list[str], rows: list[Any]) -> str:
        """Rows in the current mode, with the `.width` widths and the `.mode insert` table."""
        s = self.settings
        return render(headers, rows, s.mode, s.headers, widths=s.widths, table=s.insert_table)

    def message(self, text: str) -> None:
        """Status for the person at the terminal (never mixed into results)."""
        self.stdout.flush()
        self.stderr.write(text + "\n")
        self.stderr.flush()

    def error(self, text: str, where: str | None = None) -> None:
        self.errors += 1
        if self.settings.bail and self._depth:
            self.bailing = True  # .bail on: the script being read stops here
        self.message(f"Error{f' {where}' if where else ''}: {text}")

    def set_output(self, path: Path | None) -> None:
        if path is not None:
            try:
                handle = open(path, "w", encoding="utf-8")
            except OSError as exc:
                raise registry.CommandError(f"cannot write {path}: {exc.strerror or exc}") from None
        if self._output_file is not None:
            self._output_file.close()
            self._output_file = None
        if path is None:
            self.out = self.stdout
        else:
            self._output_file = self.out = handle

    # -- running input ------------------------------------------------------------------------

    def handle(self, text: str, where: str | None = None) -> bool:
        """Run one complete input: a dot-command or one or more SQL statements. A failing statement
        stops the rest of its input, as in sqlite3. Return False if something failed.
        After `.once FILE`, this input's results go to FILE."""
        if self.settings.echo:
            self.write(text.strip("\n") + "\n")
        once, self.once = self.once, None
        if once is not None:
            previous, self.out = self.out, once
        try:
            if is_dot_command(text):
                return self.run_dot(text.strip(), where)
            for sql in split_statements(text):
                if not self.run_sql(sql, where):
                    return False
            return True
        finally:
            if once is not None:
                once.close()
                if self.out is once:  # (unless this input was an .output)
                    self.out = previous

    def run_dot(self, line: str, where: str | None = None) -> bool:
        try:
            registry.dispatch(self, line)
        except (registry.CommandError, Error) as exc:
            self.error(str(exc), where)
            return False
        except UnicodeError as exc:
            self.error(_unicode_problem(exc), where)
            return False
        except OSError as exc:  # a file a dot-command reads or writes
            self.error(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc), where)
            return False
        except Exception as exc:  # a bug: said in one line, the session goes on
            self.error(f"internal error: {type(exc).__name__}: {exc}", where)
            return False
        return True

    def run_sql(self, sql: str, where: str | None = None) -> bool:
        cursor = self.conn.cursor()
        wrote = self.conn.last_write_lsn
        started = time.perf_counter()
        try:
            with self.ctrl_c.armed() if self.ctrl_c is not None else nullcontext():
                cursor.execute(sql)
                rows = cursor.fetchall() if cursor.description else []
        except Error as exc:
            self.error(str(exc), where)  # SQLite's own message
            return False
        except UnicodeError as exc:
            self.error(_unicode_problem(exc), where)
            return False
        elapsed = time.perf_counter() - started
        if cursor.description and rows:
            self.result(self.render([d[0] for d in cursor.description], rows))
        if self.settings.nodeinfo:
            info = self.describe(cursor, len(rows), wrote)
            if info:
                self.message(info)
        if cursor.description is None and cursor.rowcount >= 0:
            self.changed(cursor.rowcount)
        if self.settings.timer:
            self.message(f"Run Time: real {elapsed:.3f}")
        return True

    def changed(self, count: int) -> None:
        """A write changed `count` rows: `.changes on` says so, as sqlite3 does."""
        self.total_changes += count
        if self.settings.changes:
            self.message(f"changes: {count}   total_changes: {self.total_changes}")

    def interrupt(self) -> None:
        """sqlite3_interrupt on the connections a statement may be running on."""
        self.conn.interrupt()

    def describe(self, cursor: Cursor | RemoteCursor, count: int, wrote: int | None = None,
                 what: str | None = None) -> str:
        """`-- 2 rows · node2 (follower) at LSN 7`: what a statement did and where. `wrote`: the
        session's last write LSN before the statement (a remote write's cursor has no LSN of its own);
        `what`: said instead of the row count (`3 rows imported into t`)."""
        parts = []
        if what is not None:
            parts.append(what)
        elif cursor.description is not None:
            parts.append(f"{count} row{'' if count == 1 else 's'}")
        elif cursor.rowcount >= 0:
            parts.append(f"{cursor.rowcount} row{'' if cursor.rowcount == 1 else 's'} changed")
        node = cursor.node
        if node is not None:
            where = f"{node} ({self.role(node)})"
            lsn = cursor.lsn
            if lsn is None and wrote is not None and self.conn.last_write_lsn != wrote:
                lsn = self.conn.last_write_lsn  # the statement committed a write: its log entry
            if lsn is not None:
                where += f" at LSN {lsn}"
            if self.conn.in_transaction:
                where += ", transaction open"
            parts.append(where)
        elif self.conn.in_transaction:
            parts.append("transaction open")
        return "-- " + " · ".join(parts) if parts else ""

    def role(self, node: str) -> str:
        if self.cluster is None:  # a remote read is served by a follower, the rest by the session's leader
            return "leader" if node == getattr(self.conn, "leader", None) else "follower"
        try:
            return self.cluster.config.node(node).role
        except Error:
            return "node"

    def report(self) -> dict[str, Any]:
        """A distributed cluster's nodes, lease and stream, as `replproxy status URL` shows them."""
        from ...dist.report import status

        return status(self.target)

    def run_script(self, lines: Iterable[str], source: str = "stdin") -> None:
        """Run SQL and dot-commands read line by line (stdin that is not a terminal, `.read`).
        An error is reported with its line and the script goes on, as in sqlite3 (`.bail on`: it stops)."""
        if self._depth >= MAX_READ_DEPTH:
            raise registry.CommandError(f"{source}: .read nested more than {MAX_READ_DEPTH} deep")
        if not self._depth:
            self.bailing = False  # .bail stops the scripts being read, never a session at its prompt
        self._depth += 1
        try:
            buffer, first = "", 0
            for number, line in enumerate(lines, 1):
                if self.done or self.bailing:
                    return
                try:
                    line.encode("utf-8")
                except UnicodeEncodeError as exc:  # bytes that are not UTF-8: drop the statement
                    self.error(bad_input(exc), f"in {source} line {number}")
                    buffer = ""
                    continue
                if not buffer and is_dot_command(line):
                    self.handle(line, f"in {source} line {number}")
                    continue
                if not buffer:
                    first = number
                buffer += line
                if is_blank(buffer):
                    buffer = ""
                elif apsw.complete(buffer):
                    self.handle(buffer, f"in {source} line {first}")
                    buffer = ""
            if buffer and not (self.done or self.bailing):
                self.handle(buffer, f"in {source} line {first}")
        finally:
            self._depth -= 1

    # -- schema, for .tables, .schema and completion ------------------------------------------

    def _look(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """The rows of a read of the schema: on the leader's file, or through the remote connection."""
        if self.cluster is None:
            return self.conn.execute(sql, params).fetchall()
        return self._leader_meta().execute(sql, params).fetchall()

    def _leader_meta(self) -> apsw.Connection:
        assert self.cluster is not None
        if self._meta is not None and self._meta_node != self.cluster.leader:
            self._meta.close()  # a failover (maybe automatic, in another process) moved the leader
            self._meta = None
        if self._meta is None:
            self._meta_node = self.cluster.leader
            self._meta = self.cluster.open_node(self.cluster.leader)
            self._meta.execute("PRAGMA query_only=1")  # this connection only looks
        return self._meta

    def schema(self) -> dict[str, list[str]]:
        """Columns of every user table and view on the leader, reloaded when the schema changes."""
        (version,) = self._look("SELECT schema_version FROM pragma_schema_version")[0]
        if version != self._schema_version:
            columns: dict[str, list[str]] = {}
            for table, column in self._look(
                    "SELECT m.name, p.name FROM sqlite_master AS m, pragma_table_info(m.name) AS p "
                    "WHERE m.type IN ('table', 'view') AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
                    "ORDER BY m.name, p.cid"):
                if not logformats.is_internal_table(table):
                    columns.setdefault(table, []).append(column)
            self._columns, self._schema_version = columns, version
        return self._columns

    def object_names(self, types: tuple[str, ...], pattern: str | None = None) -> list[str]:
        """User objects of these types, without replproxy's and SQLite's internal tables."""
        marks = ", ".join("?" * len(types))
        rows = self._look(
            f"SELECT name FROM sqlite_master WHERE type IN ({marks}) AND name LIKE ? "
            "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name", (*types, pattern or "%"))
        return [name for (name,) in rows if not logformats.is_internal_table(name)]

    def index_names(self, pattern: str | None = None) -> list[str]:
        """Indexes of the user tables matching the LIKE pattern, SQLite's automatic ones too (as sqlite3)."""
        rows = self._look("SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND tbl_name LIKE ? "
                          "ORDER BY name", (pattern or "%",))
        return [name for name, table in rows if not logformats.is_internal_table(table)
                and not name.lower().startswith(logformats.INTERNAL_PREFIX)]

    def schema_sql(self, pattern: str | None = None) -> list[str]:
        rows = self._look(
            "SELECT tbl_name, name, sql FROM sqlite_master WHERE sql IS NOT NULL AND tbl_name LIKE ? "
            "AND tbl_name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
            "ORDER BY tbl_name, type DESC, name", (pattern or "%",))
        # replproxy's own triggers on user tables (guards, captures) are not the user's schema.
        return [sql for table, name, sql in rows
                if not logformats.is_internal_table(table) and not logformats.is_internal_table(name)]

    def functions(self) -> list[str]:
        if self._functions is None:  # SQLite's built-in functions do not change while we run
            rows = self._look("SELECT DISTINCT name FROM pragma_function_list")
            self._functions = sorted(name for (name,) in rows if not name.startswith("sqlite_"))
        return self._functions

    # -- the interactive front end's helpers --------------------------------------------------

    def positions(self) -> list[tuple[str, str, int, str]]:
        """(node, role, applied LSN, state) of every node; the state is "ok" when nothing is wrong."""
        if self.cluster is None:
            return [(n["name"], n["role"], n["lsn"], "ok" if n["state"] == "running" else n["state"])
                    for n in self.report()["nodes"]]
        return [(n.name, n.role, n.applied_lsn, n.state) for n in self.cluster.status()]

    def toolbar(self) -> str:
        """One line of cluster state under the prompt: each node's position, the consistency."""
        try:
            nodes = self.positions()
        except Error as exc:
            return f" cluster: {exc}"
        parts = [f"{name}{'*' if role == 'leader' else ''} LSN {lsn}{'' if state == 'ok' else ' ' + state}"
                 for name, role, lsn, state in nodes]
        return (" " + "  ".join(parts) + f"  │ consistency {self.conn.consistency}"
                f"  │ mode {self.settings.mode}  │ .help")

    def banner(self) -> str:
        if self.cluster is None:
            try:
                report = self.report()
            except Error as exc:
                cluster = f"cluster: {exc}"
            else:
                followers = ", ".join(n["name"] for n in report["nodes"] if n["role"] != "leader") or "none"
                cluster = (f"distributed cluster {report['cluster']}: leader {report['leader'] or 'NONE'}, "
                           f"followers {followers}; {report['format']} log, {report['mode']} replication")
        else:
            config = self.cluster.config
            followers = ", ".join(self.cluster.followers) or "none"
            cluster = (f"leader {self.cluster.leader}, followers {followers}; {config.format} log "
                       f"({config.row_image} row images)")
        return (f"replproxy shell on {self.target}\n{cluster}; consistency {self.conn.consistency}\n"
                "Enter SQL ending with ';' or a dot-command (.help). Ctrl-C cancels, Ctrl-D exits.")

    def forget_leader(self) -> None:
        """Close the schema connection; the next look reopens it on the current leader."""
        if self._meta is not None:
            self._meta.close()
            self._meta = None

    def close(self) -> None:
        if self.once is not None:
            self.once.close()
            self.once = None
        self.set_output(None)
        self.forget_leader()
        self.conn.close()


# -- completion ---------------------------------------------------------------------------------

_WORD = re.compile(r"(?:([\w$]+)\.)?([\w$]*)$")
_TABLE_CONTEXT = {"FROM", "JOIN", "INTO", "UPDATE", "TABLE", "EXISTS"}
_ALIAS = re.compile(r"\b(?:FROM|JOIN|UPDATE|INTO)\s+([\w$]+)(?:\s+(?:AS\s+)?([\w$]+))?", re.I)


class ShellCompleter(Completer):
    """Dot-commands and their arguments; SQL keywords, tables, columns and functions, with tables
    first after FROM/JOIN/INTO/UPDATE and columns of `t.` (or of an alias of t) after a dot."""

    def __init__(self, shell: Shell):
        self.shell = shell
        self._paths = PathCompleter(expanduser=True)

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterator[Completion]:
        text = document.text_before_cursor
        try:
            if is_dot_command(document.text):
                yield from self._dot(text.lstrip(), complete_event)
            else:
                yield from self._sql(text, document.text, complete_event)
        except (apsw.Error, Error):
            return  # a cluster that cannot be read offers no completions, it does not crash the prompt

    def _dot(self, text: str, event: CompleteEvent) -> Iterator[Completion]:
        words = text.split(" ")
        if len(words) == 1:
            for name in sorted(registry.COMMANDS):
                if ("." + name).startswith(words[0]):
                    cmd = registry.COMMANDS[name]
                    yield Completion("." + name, -len(words[0]), display_meta=cmd.summary)
            return
        try:
            cmd = registry.lookup(words[0][1:])
        except registry.CommandError:
            return
        if cmd.complete is None:
            return
        current = words[-1]
        candidates = cmd.complete(self.shell, len(words) - 2)
        if candidates is None:
            yield from self._paths.get_completions(Document(current), event)
            return
        for word in candidates:
            if word.startswith(current):
                yield Completion(word, -len(current))

    def _sql(self, text: str, whole: str, event: CompleteEvent) -> Iterator[Completion]:
        match = _WORD.search(text)
        qualifier, word = (match.group(1), match.group(2)) if match else (None, "")
        if not word and not qualifier and not event.completion_requested:
            return  # while typing, a popup on every space would be noise
        schema = self.shell.schema()
        if qualifier:
            table = self._resolve(qualifier, whole, schema)
            for column in schema.get(table or "", []):
                if column.lower().startswith(word.lower()):
                    yield Completion(column, -len(word), display_meta="column")
            return
        before = text[:len(text) - len(word)]
        previous = re.findall(r"[A-Za-z_]+", before)
        after_table_word = bool(previous) and previous[-1].upper() in _TABLE_CONTEXT
        mentioned = [t for t in schema if re.search(rf"\b{re.escape(t)}\b", whole, re.I)]
        columns = [c for t in mentioned for c in schema[t]] + [c for t in schema for c in schema[t]]
        groups: list[tuple[str, Iterable[str]]] = [("table", sorted(schema))]
        if not after_table_word:
            groups.insert(0, ("column", columns))
            groups += [("keyword", self._keywords(word)), ("function", self.shell.functions())]
        seen = set()
        lowered = word.lower()
        for meta, names in groups:
            for name in names:
                if name.lower().startswith(lowered) and name.lower() not in seen:
                    seen.add(name.lower())
                    yield Completion(name, -len(word), display_meta=meta)

    @staticmethod
    def _keywords(word: str) -> list[str]:
        # Follow the user's case: `sel` completes to `select`, `SEL` to `SELECT`.
        lower = word.islower()
        return sorted(k.lower() if lower else k for k in apsw.keywords)

    @staticmethod
    def _resolve(name: str, whole: str, schema: dict[str, list[str]]) -> str | None:
        """The table a qualifier names: itself, or the table it is an alias of."""
        for table in schema:
            if table.lower() == name.lower():
                return table
        for table, alias in _ALIAS.findall(whole):
            if alias.lower() == name.lower():
                for known in schema:
                    if known.lower() == table.lower():
                        return known
        return None


# -- front ends ---------------------------------------------------------------------------------

def interact(shell: Shell, history: Path | None) -> None:
    """The prompt_toolkit loop: history, multi-line SQL, completion, highlighting, a status bar."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.application.current import get_app
    from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
    from prompt_toolkit.filters import Condition
    from prompt_toolkit.history import FileHistory, History, InMemoryHistory
    from prompt_toolkit.lexers import PygmentsLexer
    from pygments.lexers.sql import SqlLexer

    store: History = InMemoryHistory()
    if history is not None:
        try:
            history.parent.mkdir(parents=True, exist_ok=True)
            history.touch()
            store = FileHistory(str(history))
        except OSError as exc:
            shell.message(f"(history not saved: cannot write {history}: {exc.strerror or exc})")

    # Enter inserts a newline until the input is complete (litecli does the same); Esc-Enter
    # runs it anyway.
    multiline = Condition(lambda: not is_complete(get_app().current_buffer.text))
    session: PromptSession[str] = PromptSession(
        history=store, lexer=PygmentsLexer(SqlLexer), completer=ShellCompleter(shell),
        complete_while_typing=True, auto_suggest=AutoSuggestFromHistory(), multiline=multiline,
        prompt_continuation=lambda width, line, soft: CONTINUATION.rjust(width),
        enable_history_search=False, search_ignore_case=True)
    shell.ctrl_c = CtrlC(shell.interrupt)
    shell.interactive = True
    shell.message(shell.banner())
    try:
        while not shell.done:
            try:
                text = session.prompt(PROMPT, bottom_toolbar=shell.toolbar())
            except KeyboardInterrupt:
                continue  # Ctrl-C drops the input being typed
            except EOFError:
                break  # Ctrl-D
            try:
                shell.handle(text)
            except KeyboardInterrupt:
                shell.error("interrupted")
            except Exception as exc:  # a bug must not cost the user the session; say what it was
                shell.error(f"internal error: {type(exc).__name__}: {exc}")
    finally:
        shell.ctrl_c.close()
        shell.ctrl_c = None


def _leaving(shell: Shell, timeout: float = 2.0) -> None:
    """Before exit: say that an open transaction is rolled back, give followers a moment to apply
    what this session wrote (no daemon is required, so this process may be the one moving them),
    and say which followers stay paused after we leave."""
    if shell.conn.in_transaction:
        shell.message("note: the open transaction is rolled back (COMMIT to keep its changes)")
    if shell.cluster is None:
        return  # a distributed cluster's nodes apply the log in their own `serve` processes
    try:
        nodes = shell.cluster.status()
        if shell.conn.last_write_lsn:
            moving = [n.name for n in nodes if n.role == "follower" and n.state == "ok"]
            shell.cluster.wait_for_catchup(timeout, nodes=moving)
    except Error:
        return
    paused = [n.name for n in nodes if n.state == "paused"]
    if paused:
        shell.message(f"note: {', '.join(paused)} stay{'s' if len(paused) == 1 else ''} paused "
                      f"for every process (.resume NODE or `replproxy resume DIR NODE`)")


def _offer_cluster(directory: Path, create: bool, interactive: bool, stdin: TextIO,
                   stderr: TextIO) -> bool:
    """Whether to create a demo cluster in a directory that holds none (missing or empty)."""
    if create:
        return True
    if not interactive:
        stderr.write(f"Error: no cluster at {directory}; pass --create to make one there "
                     f"(a leader and two followers), or run `replproxy init {directory}`\n")
        return False
    stderr.write(f"No cluster at {directory}. Create a demo cluster there "
                 "(a leader and two followers)? [Y/n] ")
    stderr.flush()
    answer = stdin.readline()
    return answer.strip().lower() in ("", "y", "yes")


def _open_cluster(path: Path, create: bool, interactive: bool, stdin: TextIO, stderr: TextIO) -> Cluster | None:
    """The embedded cluster in `path`, created there if it holds none and the user agrees."""
    if not cfg.config_path(path).exists() and (not path.exists() or (path.is_dir() and not any(path.iterdir()))):
        if not _offer_cluster(path, create, interactive, stdin, stderr):
            return None
        cluster = Cluster.init(path, followers=2)
        stderr.write(f"Created a cluster in {path}: {cluster.leader} (leader), "
                     f"{', '.join(cluster.followers)} (followers)\n")
        return cluster
    return Cluster(path)


def run_shell(directory: str | os.PathLike[str], *, create: bool = False, history: Path | None = None,
              mode: str = "table", stdin: TextIO | None = None, stdout: TextIO | None = None,
              stderr: TextIO | None = None, interactive: bool | None = None) -> int:
    """Open the cluster in `directory` (offering to create one), or connect to the distributed
    cluster at a URL or from a follower's directory, and run the shell; return the exit status:
    1 when a script had errors or the cluster could not be opened, else 0."""
    from ...dist.local import connect_remote, is_remote

    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    if interactive is None:
        interactive = stdin.isatty()
    target = os.fspath(directory)
    cluster: Cluster | None = None
    try:
        if is_remote(target):
            conn = connect_remote(target, autocommit=True)
        else:
            cluster = _open_cluster(Path(target), create, interactive, stdin, stderr)
            if cluster is None:
                return 1
            conn = connect(cluster.directory, cluster=cluster, autocommit=True)
    except Error as exc:
        if cluster is not None:
            cluster.close()
        stderr.write(f"Error: {exc}\n")
        return 1
    except OSError as exc:
        stderr.write(f"Error: {exc.strerror or exc}: {exc.filename or target}\n")
        return 1
    shell = Shell(cluster, stdout=stdout, stderr=stderr, conn=conn, mode=mode, target=target)
    try:
        if interactive:
            interact(shell, history if history is not None else default_history_path())
        else:
            shell.run_script(stdin)
        _leaving(shell)
    finally:
        shell.close()
        if cluster is not None:
            cluster.close()
    return 1 if shell.errors and not interactive else 0


def _unicode_problem(exc: UnicodeError) -> str:
    """Text that is not UTF-8: a value read (decode) or what the user typed (encode)."""
    if isinstance(exc, UnicodeDecodeError):
        return not_utf8(exc)
    if isinstance(exc, UnicodeEncodeError):
        return bad_input(exc)
    return str(exc)
