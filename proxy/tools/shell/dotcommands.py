"""The shell's dot-commands, registered in registry.py (whose docstrings build `.help`).

Importing this module registers them; the shell package does it once.
"""

from __future__ import annotations

import math
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

import apsw

from ...cluster.verify import verify
from ...driver import consistency
from ...errors import Error
from ..render import MODES
from .arguments import files, in_columns, on_off, switch, tables
from .registry import CommandError, command, commands, lookup

if TYPE_CHECKING:
    from .repl import Shell

# -- argument completers -----------------------------------------------------------------------

def _followers(shell: Shell, index: int) -> list[str]:
    return list(shell.cluster.followers) if shell.cluster is not None else []


# -- the commands ------------------------------------------------------------------------------

@command(".help ?COMMAND?", args=(0, 1), complete=lambda shell, i: [c.name for c in commands()])
def _help(shell: Shell, args: list[str]) -> None:
    """Show the dot-commands, or the full help of one.

    Anything that is not a dot-command is SQL: end a statement with `;` to run it.
    """
    if args:
        cmd = lookup(args[0].lstrip("."))
        text = cmd.help + (f"\n\nEmbedded clusters only; on a distributed one: {cmd.instead}." if cmd.instead else "")
        shell.write(f"{cmd.usage}\n" + textwrap.indent(text, "    ").rstrip() + "\n")
        return
    width = max(len(cmd.usage) for cmd in commands())
    lines = []
    for cmd in commands():
        alias = f"; also .{', .'.join(cmd.aliases)}" if cmd.aliases else ""
        lines.append(f"{cmd.usage.ljust(width)}  {cmd.summary.rstrip('.')}{alias}")
    shell.write("\n".join(lines) + "\n")


@command(".tables ?PATTERN?", args=(0, 1), complete=tables)
def _tables_cmd(shell: Shell, args: list[str]) -> None:
    """List tables and views (PATTERN is a LIKE pattern)."""
    shell.write(in_columns(shell.object_names(("table", "view"), args[0] if args else None)))


@command(".schema ?PATTERN?", args=(0, 1), complete=tables)
def _schema(shell: Shell, args: list[str]) -> None:
    """Show the CREATE statements of matching tables, their indexes and triggers."""
    shell.result("".join(sql + ";\n" for sql in shell.schema_sql(args[0] if args else None)))


@command(".nodes")
def _nodes(shell: Shell, args: list[str]) -> None:
    """Show every node: role, applied LSN, lag (entries and seconds) and state.

    State is ok, paused (held by .pause), error (stopped by an entry it could not apply), missing,
    needs-snapshot or stopped (.stop); the leader shows outside-writes when a program wrote to its
    file directly (row, statement and mixed formats), which the followers never receive.

    On a distributed cluster, as `replproxy status` shows it: each node's LSN, lag behind the
    stream, state (running, paused, stopped, unreachable), host and when it last reported.
    """
    if shell.cluster is None:
        headers = ["node", "role", "LSN", "lag", "state", "host", "heard (s ago)", "error"]
        rows = [[n["name"], n["role"], n["lsn"], "" if n["lag_entries"] is None else n["lag_entries"], n["state"],
                 n["host"] or "", n["heard_s_ago"], n["error"] or ""] for n in shell.report()["nodes"]]
    else:
        headers = ["node", "role", "applied LSN", "lag", "lag (s)", "state", "error"]
        rows = [[n.name, n.role, n.applied_lsn, n.lag_entries, n.lag_seconds, n.state, n.error or ""]
                for n in shell.cluster.status()]
    shell.write(shell.render(headers, rows))


@command(".consistency ?LEVEL?", args=(0, 1), complete=lambda shell, i: list(consistency.LEVELS))
def _consistency_cmd(shell: Shell, args: list[str]) -> None:
    """Show or set the read consistency of this session.

    strong            every read goes to the leader
    session           read-your-writes and monotonic reads (the default)
    read-your-writes  a follower serves a read once it has applied your last write
    monotonic         never read an older state than one you have already seen
    eventual          any follower, however far behind: your own write may be missing
    """
    conn = shell.conn
    if args:
        conn.consistency = args[0]
    shell.write(f"consistency {conn.consistency}\n")


@command(".format")
def _format(shell: Shell, args: list[str]) -> None:
    """Show the log format, the row image and the synchronous settings.

    On a distributed cluster: the log format and the replication mode.
    """
    if shell.cluster is None:
        report = shell.report()
        shell.write(f"log format   {report['format']}\nreplication  {report['mode']}\n")
        return
    config = shell.cluster.config
    image = {"full": "changesets: before and after images",
             "minimal": "patchsets: key and changed values"}.get(config.row_image, "")
    shell.write(f"log format   {config.format}\n"
                f"row image    {config.row_image} ({image})\n"
                f"synchronous  leader {config.synchronous}, followers {config.follower_synchronous}\n")


@command(".log ?N?", args=(0, 1))
def _log(shell: Shell, args: list[str]) -> None:
    """Show the last N log entries decoded (default 10), like `replproxy log`."""
    try:
        count = int(args[0]) if args else 10
    except ValueError:
        raise CommandError(f"N must be a number, not {args[0]!r}") from None
    if count < 1:
        raise CommandError("N must be at least 1")
    cluster = shell.cluster
    if cluster is None:
        from ...dist.report import log_entries

        last = shell.report()["stream"]["last_lsn"]
        count = min(count, max(last, 1))
        items, _first = log_entries(shell.target, max(1, last - count + 1), count)
    else:
        count = min(count, max(cluster.leader_lsn(), 1))  # no more than there are (SQLite's integers)
        items = cluster.decode(cluster.entries(max(1, cluster.leader_lsn() - count + 1), count))
    shell.result("".join("\n".join(item.lines()) + "\n" for item in items))


_HOLD = "stop or start that follower's `replproxy serve` on its machine"


@command(".pause NODE", args=(1, 1), complete=_followers, instead=_HOLD)
def _pause(shell: Shell, args: list[str]) -> None:
    """Hold follower NODE at its applied LSN, for every process (injects lag)."""
    shell.cluster.pause(args[0])
    shell.message(f"{args[0]} paused")


@command(".resume NODE", args=(1, 1), complete=_followers, instead=_HOLD)
def _resume(shell: Shell, args: list[str]) -> None:
    """Let follower NODE apply the log again; it catches up from its own position."""
    shell.cluster.resume(args[0])
    shell.message(f"{args[0]} resumed")


@command(".wait ?SECONDS?", args=(0, 1))
def _wait(shell: Shell, args: list[str]) -> None:
    """Wait until every follower that is not paused has applied the whole log.

    SECONDS is how long to wait at most (default 10).
    """
    try:
        timeout = float(args[0]) if args else 10.0
    except ValueError:
        raise CommandError(f"SECONDS must be a number, not {args[0]!r}") from None
    if not math.isfinite(timeout) or timeout < 0:
        raise CommandError(f"SECONDS must be a finite number of seconds, not {args[0]!r}")
    if shell.cluster is None:
        moving, lsn = _wait_distributed(shell, timeout)
    else:
        moving = [n.name for n in shell.cluster.status() if n.role == "follower" and n.state == "ok"]
        lsn = shell.cluster.wait_for_catchup(timeout, nodes=moving)
    shell.message(f"{', '.join(moving) or 'no follower'} at LSN {lsn}")


def _wait_distributed(shell: Shell, timeout: float) -> tuple[list[str], int]:
    """Until the running followers report the stream's last LSN (as it was at the start)."""
    deadline = time.monotonic() + timeout
    lsn = None
    while True:
        report = shell.report()
        lsn = report["stream"]["last_lsn"] if lsn is None else lsn
        moving = [n for n in report["nodes"] if n["role"] == "follower" and n["state"] == "running"]
        behind = [f"{n['name']} at LSN {n['lsn']}" for n in moving if n["lsn"] < lsn]
        if not behind:
            return [n["name"] for n in moving], lsn
        if time.monotonic() >= deadline:
            raise CommandError(f"not every follower reached LSN {lsn} within {timeout:g}s: {', '.join(behind)}")
        time.sleep(0.1)  # the nodes report their positions every half second or so


@command(".verify")
def _verify(shell: Shell, args: list[str]) -> None:
    """Compare every follower with the leader, like `replproxy verify`.

    Schema and content of every user table are compared at exactly one LSN: every follower is
    held and brought to the leader's last LSN, then compared.

    A paused or stopped follower is reported as not compared; a follower that diverged or is
    ahead of the leader as different.
    """
    try:
        if shell.cluster is None:
            from ...dist.report import verify as verify_distributed

            report = verify_distributed(shell.target, timeout=10.0)
        else:
            report = verify(shell.cluster, timeout=10.0)
    except (Error, apsw.Error) as exc:
        raise CommandError(str(exc)) from None
    if report.identical:
        shell.write(f"OK: {len(report.nodes)} nodes identical at LSN {report.lsn} "
                    f"({report.tables} tables compared)\n")
        return
    head = "DIFFERENT" if report.outcome == "different" else "COULD NOT COMPARE"
    shell.write(f"{head} at LSN {report.lsn}:\n")
    shell.write("".join(f"  {d.node}: {d.object if d.compared else 'not compared'}: {d.detail}\n"
                        for d in report.differences))
    shell.errors += 1


@command(".failover ?NODE?", args=(0, 1), complete=_followers,
         instead="a follower takes over when the leader's lease expires (stop the leader's `replproxy serve`)")
def _failover(shell: Shell, args: list[str]) -> None:
    """Promote a follower to leader (default: the most up-to-date one); the old leader is fenced."""
    try:
        result = shell.cluster.failover(args[0] if args else None)
    except Error as exc:
        raise CommandError(str(exc)) from None
    shell.forget_leader()  # the schema connection follows the new leader
    for line in result.lines():
        shell.write(line + "\n")


def _node_names(shell: Shell, index: int) -> list[str]:
    return [n.name for n in shell.cluster.config.nodes] if shell.cluster is not None else []


@command(".stop NODE", args=(1, 1), complete=_node_names,
         instead="stop that node's `replproxy serve` on its machine (Ctrl-C or SIGTERM)")
def _stop(shell: Shell, args: list[str]) -> None:
    """Stop a node as if it had crashed (a stopped leader is replaced by automatic failover)."""
    try:
        shell.cluster.stop_node(args[0])
    except Error as exc:
        raise CommandError(str(exc)) from None
    config = shell.cluster.config
    note = ""
    if args[0] == config.leader.name:
        note = (f"; automatic failover in {config.failover_timeout:g}s" if config.auto_failover
                else "; automatic failover is off (.failover)")
    shell.write(f"{args[0]} stopped{note}\n")


@command(".start NODE", args=(1, 1), complete=_node_names,
         instead="run `replproxy serve DIR` on that node's machine")
def _start(shell: Shell, args: list[str]) -> None:
    """Start a stopped node; one that missed a failover rejoins, its lost writes recorded."""
    try:
        result = shell.cluster.start_node(args[0])
    except Error as exc:
        raise CommandError(str(exc)) from None
    shell.forget_leader()
    for line in result.lines():
        shell.write(line + "\n")


@command(".mode ?MODE? ?TABLE?", args=(0, 2), complete=lambda shell, i: list(MODES) if i == 0 else tables(shell, i))
def _mode(shell: Shell, args: list[str]) -> None:
    """Show results as table, box, csv, json, line, list, markdown, tabs, quote or insert.

    table, box   a grid (`.width` sets column widths)
    csv, json    for programs; csv quotes as RFC 4180 does
    line         one `column = value` line per column, a blank line between rows
    list, tabs   values separated by | or by a tab, as they are (sqlite3's list and tabs)
    markdown     a Markdown (GitHub) table; | in values is escaped, newlines become <br>
    quote        values as SQL literals, separated by commas
    insert       INSERT statements into TABLE (default "table"), to load the rows elsewhere

    With no MODE, show the mode.
    """
    if not args:
        insert = f" {shell.settings.insert_table}" if shell.settings.mode == "insert" else ""
        shell.write(f"mode {shell.settings.mode}{insert}\n")
        return
    if args[0] not in MODES:
        raise CommandError(f"unknown mode {args[0]!r}; choose one of {', '.join(MODES)}")
    if len(args) == 2 and args[0] != "insert":
        raise CommandError(f"only .mode insert takes a TABLE; .mode {args[0]} takes none")
    shell.settings.mode = args[0]
    if args[0] == "insert":
        shell.settings.insert_table = args[1] if len(args) == 2 else "table"


@command(".headers on|off", args=(1, 1), complete=on_off)
def _headers(shell: Shell, args: list[str]) -> None:
    """Show column names above results.

    Every mode but json and line shows them when on; markdown always does.
    """
    shell.settings.headers = switch(args[0])


@command(".timer on|off", args=(1, 1), complete=on_off)
def _timer(shell: Shell, args: list[str]) -> None:
    """Show how long each statement took."""
    shell.settings.timer = switch(args[0])


@command(".nodeinfo on|off", args=(1, 1), complete=on_off)
def _nodeinfo(shell: Shell, args: list[str]) -> None:
    """Say which node served each result and at which LSN (on by default)."""
    shell.settings.nodeinfo = switch(args[0])


@command(".read FILE", args=(1, 1), complete=files)
def _read(shell: Shell, args: list[str]) -> None:
    """Run the SQL and dot-commands in FILE."""
    path = Path(args[0]).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read {path}: {exc}") from None
    shell.run_script(text.splitlines(keepends=True), source=str(path))


@command(".output ?FILE?", args=(0, 1), complete=files)
def _output(shell: Shell, args: list[str]) -> None:
    """Send results to FILE (replacing it); with no FILE, back to the screen."""
    shell.set_output(Path(args[0]).expanduser() if args else None)


@command(".quit", aliases=("exit",))
def _quit(shell: Shell, args: list[str]) -> None:
    """Leave the shell; Ctrl-D does too."""
    shell.done = True
