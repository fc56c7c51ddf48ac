"""The `replproxy` command line."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

import logformats

from . import config as cfg
from .cluster import Cluster, create_cluster
from .dbapi import connect
from .errors import Error, ReplicationTimeout
from .logview import decode_entries
from .render import render
from .verify import verify as verify_cluster


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def _open(directory: str, replicate: bool = True) -> Cluster:
    try:
        return Cluster(directory, replicate=replicate)
    except Error as exc:
        _fail(str(exc))
        raise  # unreachable


def _parse_param(text: str) -> Any:
    """`--param` values: JSON numbers, null, true/false and "quoted strings" keep their type;
    `x'ABCD'` is a BLOB; anything else is text."""
    if len(text) >= 3 and text[:2] in ("x'", "X'") and text.endswith("'"):
        try:
            return bytes.fromhex(text[2:-1])
        except ValueError:
            pass
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, (int, float, str)) or value is None:
        return value
    if isinstance(value, bool):
        return int(value)
    return text


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="replproxy")
def main() -> None:
    """replproxy: a SQL replication proxy over SQLite.

    Writes go to a leader database and are captured in a replication log; followers replay the
    log; reads go to followers that have caught up with you. Start with `replproxy demo`.
    """


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--followers", "-n", default=2, show_default=True, type=click.IntRange(0, 64),
              help="Number of follower nodes.")
@click.option("--format", "log_format", default="row", show_default=True,
              type=click.Choice(logformats.names()), help="Replication log format.")
@click.option("--row-image", default="full", show_default=True, type=click.Choice(cfg.ROW_IMAGES),
              help="Row format: full = before and after images (changesets), minimal = key and changed "
                   "values (patchsets).")
@click.option("--from", "from_db", type=click.Path(exists=True, dir_okay=False),
              help="Seed every node from this existing SQLite database (it is copied, not changed).")
@click.option("--synchronous", default="full", show_default=True, type=click.Choice(cfg.SYNCHRONOUS_LEVELS),
              help="PRAGMA synchronous on the leader (full: an acknowledged commit survives power loss).")
@click.option("--follower-synchronous", default="normal", show_default=True,
              type=click.Choice(cfg.SYNCHRONOUS_LEVELS),
              help="PRAGMA synchronous on followers (after a power loss they re-apply from their own "
                   "position).")
def init(directory: str, followers: int, log_format: str, row_image: str, from_db: str | None,
         synchronous: str, follower_synchronous: str) -> None:
    """Create a cluster in DIRECTORY: cluster.toml and one SQLite file per node (WAL mode)."""
    try:
        config = create_cluster(directory, followers=followers, format=log_format, row_image=row_image,
                                from_db=from_db, synchronous=synchronous,
                                follower_synchronous=follower_synchronous)
    except (Error, ValueError) as exc:
        _fail(str(exc))
        return
    click.echo(f"Created cluster in {directory} (format {config.format}, row image {config.row_image})")
    for node in config.nodes:
        click.echo(f"  {node.name:8} {node.role:8} {Path(directory) / node.file}")


@main.command("exec")
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("sql")
@click.option("--param", "-p", "params", multiple=True,
              help="Bind a ? parameter (repeat in order). JSON literals keep their type "
                   "(5, 1.5, null, \"5\"); x'00ff' is a BLOB; anything else is text.")
@click.option("--node", help="Read from this node only (writes are refused unless it is the leader).")
@click.option("--mode", type=click.Choice(["table", "box", "csv", "json", "line"]), default="table",
              show_default=True, help="Output format for rows.")
@click.option("--settle", default=2.0, show_default=True, type=float,
              help="Seconds to let followers catch up before exiting (0: exit at once).")
def exec_(directory: str, sql: str, params: tuple[str, ...], node: str | None, mode: str,
          settle: float) -> None:
    """Run one SQL statement through the proxy and print its rows."""
    cluster = _open(directory)
    try:
        conn = connect(directory, cluster=cluster, autocommit=True, node=node)
        cursor = conn.cursor()
        cursor.execute(sql, [_parse_param(p) for p in params])
        rows = cursor.fetchall() if cursor.description else []
        if cursor.description:
            headers = [d[0] for d in cursor.description]
            click.echo(render(headers, rows, mode), nl=False)
        elif cursor.rowcount >= 0:
            click.echo(f"{cursor.rowcount} row(s) changed", err=True)
        where = f"served by {cursor.node}"
        if cursor.lsn:
            where += f" at LSN {cursor.lsn}"
        click.echo(f"-- {where}", err=True)
        conn.close()
        if settle > 0:
            try:
                cluster.wait_for_catchup(settle)
            except (ReplicationTimeout, Error):
                pass
    except Error as exc:
        _fail(str(exc))
    finally:
        cluster.close()


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def status(directory: str, as_json: bool) -> None:
    """Per node: role, file, applied LSN, lag in entries and seconds, and state."""
    cluster = _open(directory, replicate=False)
    try:
        nodes = cluster.status()
    except Error as exc:
        _fail(str(exc))
        return
    if as_json:
        click.echo(json.dumps({"format": cluster.config.format, "row_image": cluster.config.row_image,
                               "epoch": cluster.epoch, "nodes": [n.as_dict() for n in nodes]}, indent=2))
        return
    headers = ["node", "role", "applied LSN", "lag", "lag (s)", "state", "file", "error"]
    rows = [[n.name, n.role, n.applied_lsn, n.lag_entries, n.lag_seconds, n.state, n.file, n.error or ""]
            for n in nodes]
    click.echo(f"format {cluster.config.format} (row image {cluster.config.row_image}), epoch {cluster.epoch}")
    click.echo(render(headers, rows), nl=False)


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--timeout", default=10.0, show_default=True, type=float,
              help="Seconds to wait for followers to catch up before comparing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def verify(directory: str, timeout: float, as_json: bool) -> None:
    """Compare schema and content of every user table on every node; exit 0 only if identical."""
    cluster = _open(directory)
    try:
        report = verify_cluster(cluster, timeout=timeout)
    except Error as exc:
        _fail(str(exc))
        return
    finally:
        cluster.close()
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    elif report.identical:
        click.echo(f"OK: {len(report.nodes)} nodes identical at LSN {report.lsn} "
                   f"({report.tables} tables compared)")
    else:
        click.echo(f"DIFFERENT at LSN {report.lsn}:")
        for diff in report.differences:
            click.echo(f"  {diff.node}: {diff.object}: {diff.detail}")
    sys.exit(0 if report.identical else 1)


@main.command("log")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--from", "from_lsn", default=1, show_default=True, type=click.IntRange(1),
              help="First LSN to show.")
@click.option("--limit", type=click.IntRange(0), help="Show at most this many entries.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry, one per line.")
def log_(directory: str, from_lsn: int, limit: int | None, as_json: bool) -> None:
    """Decode log entries for humans, like mysqlbinlog: LSN, epoch, time, and the changes."""
    cluster = _open(directory, replicate=False)
    try:
        decoded = decode_entries(cluster, cluster.entries(from_lsn, limit))
    except Error as exc:
        _fail(str(exc))
        return
    for item in decoded:
        if as_json:
            click.echo(json.dumps(item.as_dict(), ensure_ascii=False))
        else:
            click.echo("\n".join(item.lines()))


def _hold(directory: str, node: str, action: str) -> None:
    cluster = _open(directory, replicate=False)
    try:
        getattr(cluster, action)(node)
    except Error as exc:
        _fail(str(exc))
    click.echo(f"{node} {action}d")


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("node")
def pause(directory: str, node: str) -> None:
    """Hold follower NODE at its current LSN (for every process) to inject lag."""
    _hold(directory, node, "pause")


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("node")
def resume(directory: str, node: str) -> None:
    """Let follower NODE apply again (also retries a follower stopped by an apply error)."""
    _hold(directory, node, "resume")


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
def serve(directory: str) -> None:
    """Keep the followers of DIRECTORY moving until interrupted (optional: any process that opens the
    cluster also moves them)."""
    cluster = _open(directory)
    click.echo(f"replicating {directory} (Ctrl-C to stop)")
    stop = False

    def _stop(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stop:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.close()


@main.command()
@click.argument("directory", default="replproxy-demo", type=click.Path(file_okay=False))
def demo(directory: str) -> None:
    """Create a demo cluster (leader + 2 followers) and show replication working, step by step."""
    from .demo import run_demo

    sys.exit(run_demo(directory))


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--create", is_flag=True,
              help="If DIRECTORY holds no cluster, create one (a leader and two followers) without asking.")
@click.option("--history", "history_file", type=click.Path(dir_okay=False), envvar="REPLPROXY_HISTORY",
              help="History file [default: ~/.local/share/replproxy/shell_history; env REPLPROXY_HISTORY].")
@click.option("--mode", type=click.Choice(["table", "box", "csv", "json", "line"]), default="table",
              show_default=True, help="Output format for rows (the shell's .mode changes it).")
def shell(directory: str, create: bool, history_file: str | None, mode: str) -> None:
    """Interactive SQL shell on the cluster in DIRECTORY; each result says which node served it and at
    which LSN. With stdin not a terminal it runs the script it reads. `.help` lists dot-commands."""
    from .shell import run_shell

    sys.exit(run_shell(directory, create=create, history=Path(history_file) if history_file else None,
                       mode=mode))


@main.command()
@click.option("--transactions", "-n", default=2000, show_default=True, type=click.IntRange(100),
              help="Transactions per measurement.")
@click.option("--synchronous", "sync_levels", multiple=True, type=click.Choice(cfg.SYNCHRONOUS_LEVELS),
              help="PRAGMA synchronous levels to measure (default: full and normal).")
@click.option("--dir", "workdir", type=click.Path(file_okay=False),
              help="Where to create the benchmark databases (default: a temporary directory).")
def bench(transactions: int, sync_levels: tuple[str, ...], workdir: str | None) -> None:
    """Measure the leader's cost against plain apsw, and the follower apply rate."""
    from .bench import run_bench

    sys.exit(run_bench(transactions=transactions, sync_levels=sync_levels or ("full", "normal"),
                       workdir=workdir))


if __name__ == "__main__":
    main()
