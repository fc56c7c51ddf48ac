"""The `replproxy` command line."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import click

import logformats

from ..cluster import Cluster, create_cluster
from ..cluster.health import held_until
from ..cluster.verify import verify as verify_cluster
from ..driver import connect
from ..errors import Error, ReplicationTimeout
from ..store import config as cfg
from ..store import node as store
from ..store.decode import bad_input, iso_time, not_utf8
from .options import POSITIVE_SECONDS, SECONDS, StderrHandler, log_options, parse_param, set_log_level
from .render import echo_errors, render


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"replproxy: {message}", err=True)
    sys.exit(code)


def _open(directory: str, replicate: bool = True, require_leader: bool = True) -> Cluster:
    try:
        return Cluster(directory, replicate=replicate, require_leader=require_leader)
    except Error as exc:
        _fail(str(exc))
        raise  # unreachable


@contextlib.contextmanager
def _cluster(directory: str, replicate: bool = True, require_leader: bool = True) -> Iterator[Cluster]:
    """The cluster for one command: its errors end the command with their message."""
    cluster = _open(directory, replicate, require_leader)
    try:
        yield cluster
    except Error as exc:
        _fail(_describe(exc))
    finally:
        cluster.close()


def _print_result(result: Any, as_json: bool) -> None:
    """A failover or start-node result: its lines, or JSON."""
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        for line in result.lines():
            click.echo(line)


class _Main(click.Group):
    """The command group: whatever escapes a command ends it with one line, never a traceback
    (REPLPROXY_TRACEBACK=1 shows it, for a bug report)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if os.environ.get("REPLPROXY_TRACEBACK"):
                raise
            click.echo(f"replproxy: {_describe(exc)}", err=True)
            ctx.exit(1)


def _describe(exc: BaseException) -> str:
    """One line for an exception a command did not handle itself."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, Error) and isinstance(cause, UnicodeError):
        exc = cause  # the driver's wrapping of a value that is not UTF-8
    if isinstance(exc, UnicodeDecodeError):
        return not_utf8(exc)
    if isinstance(exc, UnicodeEncodeError) and "surrogates" in str(exc):
        return bad_input(exc)
    if isinstance(exc, apsw.BusyError) or isinstance(cause, apsw.BusyError):
        return (f"{exc}: another connection held the write lock of a node's file (an open write "
                f"transaction) past the busy timeout ({store.BUSY_TIMEOUT_MS // 1000} s by default); "
                "retry once that transaction ends")
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    if isinstance(exc, (Error, apsw.Error)):
        return str(exc)
    return (f"internal error: {type(exc).__name__}: {exc} (REPLPROXY_TRACEBACK=1 shows where; "
            "please report it)")


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="replproxy")
def main() -> None:
    """replproxy: a SQL replication proxy over SQLite.

    Writes go to a leader database and are captured in a replication log; followers replay the
    log; reads go to followers that have caught up with you. Start with `replproxy demo`.
    """
    # Background events (an automatic failover, a follower stopping on an error) as one line each.
    root = logging.getLogger("replproxy")
    if not root.handlers:
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("replproxy: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.WARNING)


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
@click.option("--no-rewrite", is_flag=True,
              help="Statement format: log statements as written, without making them deterministic or "
                   "refusing unsafe ones (naive mode for demonstrations: followers may diverge).")
@click.option("--mixed-policy", type=click.Choice(["statement", "smallest"]),
              help="Mixed format: log safe statements as statements (default), or as whichever of "
                   "statement and row images is smaller.")
@click.option("--nats", "nats_urls", metavar="URL[,URL...]",
              help="Create a distributed cluster: its log, settings and lease live in NATS JetStream at "
                   "these servers; DIRECTORY holds its leader only (followers `join` from other machines). "
                   "See docs/distributed.md.")
@click.option("--cluster", "cluster_name", default="main", show_default=True,
              help="With --nats: the cluster's name (names its stream and buckets).")
@click.option("--name", "node_name", default="node1", show_default=True, help="With --nats: the leader's name.")
@click.option("--nats-creds", type=click.Path(exists=True, dir_okay=False), help="NATS credentials file.")
@click.option("--replicas", type=click.IntRange(1, 5),
              help="With --nats: JetStream replicas of the stream and buckets (default 3 with 3+ URLs, else 1).")
@click.option("--lease-ttl", default=5.0, show_default=True, type=POSITIVE_SECONDS,
              help="With --nats: seconds a leader's lease lasts without renewal (failover time).")
def init(directory: str, followers: int, log_format: str, row_image: str, from_db: str | None,
         synchronous: str, follower_synchronous: str, no_rewrite: bool, mixed_policy: str | None,
         nats_urls: str | None, cluster_name: str, node_name: str, nats_creds: str | None,
         replicas: int | None, lease_ttl: float) -> None:
    """Create a cluster in DIRECTORY: cluster.toml and one SQLite file per node (WAL mode).

    With --nats, a distributed cluster instead: DIRECTORY holds the leader; run it with
    `replproxy serve DIRECTORY` and add followers on other machines with `replproxy join`."""
    options: dict[str, Any] = {}
    if no_rewrite:
        if log_format != "statement":
            _fail("--no-rewrite applies to --format statement only")
        options["no_rewrite"] = True
    if mixed_policy is not None:
        if log_format != "mixed":
            _fail("--mixed-policy applies to --format mixed only")
        options["mixed_policy"] = mixed_policy
    try:
        if nats_urls:
            from ..dist.setup import init_distributed

            config = init_distributed(directory, nats=nats_urls, cluster=cluster_name, name=node_name,
                                      creds=nats_creds, replicas=replicas, lease_ttl=lease_ttl,
                                      format=log_format, row_image=row_image, from_db=from_db,
                                      synchronous=synchronous, follower_synchronous=follower_synchronous,
                                      options=options)
        else:
            config = create_cluster(directory, followers=followers, format=log_format, row_image=row_image,
                                    from_db=from_db, synchronous=synchronous,
                                    follower_synchronous=follower_synchronous, options=options)
    except (Error, ValueError) as exc:
        _fail(str(exc))
        return
    except OSError as exc:
        _fail(f"cannot create a cluster in {directory}: {exc.strerror or exc}"
              + (f" ({exc.filename})" if exc.filename and str(exc.filename) != directory else ""))
        return
    extra = "".join(f", {key.replace('_', ' ')} {value}" for key, value in sorted(options.items()))
    click.echo(f"Created cluster in {directory} (format {config.format}, row image {config.row_image}{extra})")
    for node in config.nodes:
        click.echo(f"  {node.name:8} {node.role:8} {Path(directory) / node.file}")
    if nats_urls:
        click.echo(f"Distributed cluster {cluster_name!r} on {nats_urls}: run `replproxy serve {directory}`, "
                   f"then on each other machine `replproxy join DIR --nats {nats_urls} --cluster {cluster_name} "
                   "--name NODE` and `replproxy serve DIR`")


@main.command("exec")
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("sql")
@click.option("--param", "-p", "params", multiple=True,
              help="Bind a ? parameter (repeat in order). JSON literals keep their type "
                   "(5, 1.5, null, \"5\"); x'00ff' is a BLOB; anything else is text.")
@click.option("--node", help="Read from this node only (writes are refused unless it is the leader).")
@click.option("--mode", type=click.Choice(["table", "box", "csv", "json", "line"]), default="table",
              show_default=True, help="Output format for rows.")
@click.option("--settle", default=2.0, show_default=True, type=SECONDS,
              help="Seconds to let followers catch up before exiting (0: exit at once).")
def exec_(directory: str, sql: str, params: tuple[str, ...], node: str | None, mode: str,
          settle: float) -> None:
    """Run SQL through the proxy and print the rows of each statement, as `sqlite3 DB "SQL"` does.

    SQL may hold several statements separated by ';', or be `-` to read them from standard input.
    Each statement commits by itself unless the SQL opens a transaction with BEGIN; the first error
    stops the run (exit 1). Ctrl-C stops a running statement. DIRECTORY may also be a distributed
    cluster's URL, nats://HOST:PORT[,HOST:PORT]/CLUSTER, or a distributed follower's directory."""
    from ..dist.local import connect_remote, is_remote
    from .execute import run_statements
    from .shell.repl import CtrlC

    text = sys.stdin.read() if sql == "-" else sql
    values = [parse_param(p) for p in params]
    conn: Any = None
    cluster: Cluster | None = None
    # Armed from the start: a Ctrl-C before the statement runs still stops it.
    ctrl_c = CtrlC(lambda: conn.interrupt() if conn is not None else None)
    try:
        with ctrl_c.armed():
            if is_remote(directory):
                conn = connect_remote(directory, autocommit=True, node=node)
            else:
                cluster = _open(directory)
                conn = connect(directory, cluster=cluster, autocommit=True, node=node)
            code = run_statements(conn, text, values, mode, _describe)
    finally:
        ctrl_c.close()
        if conn is not None:
            conn.close()
        if cluster is not None:
            if settle > 0:
                with contextlib.suppress(ReplicationTimeout, Error):
                    cluster.wait_for_catchup(settle)
            cluster.close()
    sys.exit(code)


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def status(directory: str, as_json: bool) -> None:
    """Per node: role, file, applied LSN, lag in entries and seconds, and state; failover
    settings, leader health and lost writes."""
    if _distributed(directory):
        from .nodes import print_status

        print_status(directory, as_json)
        return
    with _cluster(directory, replicate=False) as cluster:
        nodes = cluster.status()
        replication = cluster.replication_status()
        health = cluster.health()
    if as_json:
        click.echo(json.dumps({"format": cluster.config.format, "row_image": cluster.config.row_image,
                               "epoch": cluster.epoch, "replication": replication,
                               "failover": health, "lost_writes": health["lost_writes"],
                               "nodes": [n.as_dict() for n in nodes]}, indent=2))
        return
    # Fits 80 columns: files relative to the cluster directory, errors under the table.
    headers = ["node", "role", "sync", "LSN", "lag", "lag (s)", "state", "file"]
    rows = [[n.name, n.role, n.replication, n.applied_lsn, n.lag_entries, n.lag_seconds, n.state,
             _relative(n.file, cluster.directory)] for n in nodes]
    click.echo(f"format {cluster.config.format} (row image {cluster.config.row_image}), epoch {cluster.epoch}")
    click.echo(_mode_line(replication))
    click.echo(_failover_line(health))
    for lost in health["lost_writes"]:
        span = (f"LSN {lost['first_lsn']}..{lost['last_lsn']}" if lost.get("first_lsn") is not None
                else lost.get("error", "empty"))
        click.echo(f"LOST WRITES: {lost['entries']} entries ({span}) in {lost['file']}")
    click.echo(render(headers, rows), nl=False)
    echo_errors((n.name, n.error) for n in nodes)


def _relative(path: str, directory: Any) -> str:
    try:
        return str(Path(path).relative_to(Path(directory).resolve()))
    except ValueError:
        return path


def _embedded_only(directory: str, instead: str) -> None:
    """Refuse an embedded-cluster operation on a node of a distributed cluster, saying what to do."""
    if _distributed(directory):
        _fail(f"{directory} is a node of a distributed cluster (docs/distributed.md): {instead}")


def _distributed(directory: str) -> bool:
    """A distributed node's directory, or a distributed cluster's URL."""
    from ..dist import local
    from ..remote.protocol import is_url

    return is_url(directory) or local.is_distributed(directory)


def _clock(t: float) -> str:
    return iso_time(t)


def _failover_line(h: dict[str, Any]) -> str:
    if h["auto_failover"]:
        text = (f"failover automatic after {h['failover_timeout']:g}s, not within "
                f"{h['failover_cooldown']:g}s of the last")
    else:
        text = "failover manual only (auto_failover off)"
    if h["last_failover_at"]:
        text += f"; last failover {_clock(h['last_failover_at'])} (epoch {h['epoch']})"
    text = textwrap.fill(text, 80, subsequent_indent="  ", break_on_hyphens=False)
    if not h["leader_ok"]:
        down = f"LEADER DOWN: {h['leader_problem']}"
        if h["held_until"]:
            down += f"; automatic failover held until {_clock(h['held_until'])} (anti-flapping)"
        elif h["failover_due_at"]:
            down += (f"; automatic failover due at {_clock(h['failover_due_at'])} by any process "
                     "with the cluster open (replproxy serve)")
        text += "\n" + textwrap.fill(down, 80, subsequent_indent="  ", break_on_hyphens=False)
    return text


def _mode_line(r: dict[str, Any]) -> str:
    mode = r["mode"]
    if mode == "sync":
        mode += f" (waits for {', '.join(r['sync_followers'])}; timeout {r['sync_timeout']:g}s)"
    elif mode == "semi-sync":
        mode += f" (k={r['semi_sync_k']}; timeout {r['sync_timeout']:g}s)"
        if r["degraded"]:
            mode += f" DEGRADED to async since {iso_time(r['degraded_since'])}: " \
                    f"{r['degraded_reason']}"
    span = (f"LSN {r['retained_from_lsn']}..{r['retained_to_lsn']}" if r["retained_entries"] else "empty")
    limit = f"keep last {r['retain_min_entries']:,}, max "
    limit += f"{r['retain_max_bytes']:,} bytes" if r["retain_max_bytes"] else "no size limit"
    if r["retain_max_age"]:
        limit += f", {r['retain_max_age']:g} s"
    if r.get("auto_resync"):
        limit += ", auto-resync"
    holds = "".join(f", hold {name} at {lsn}" for name, lsn in r["retention_holds"].items())
    switched = r.get("format_switch")
    lines = [f"format switched from {switched['from']} to {switched['to']} after LSN {switched['after_lsn']}"
             ] if switched else []
    lines += [f"mode {mode}", f"log retained: {r['retained_entries']} entries, {r['retained_bytes']:,} bytes "
             f"({span}; limit {limit}{holds})"]
    return "\n".join(textwrap.fill(line, 80, subsequent_indent="  ", break_on_hyphens=False) for line in lines)


@main.command("config")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--mode", type=click.Choice(cfg.MODES), help="Replication mode.")
@click.option("--sync-followers", help="Comma-separated followers whose role becomes sync (others: async).")
@click.option("--semi-sync-k", type=click.IntRange(1), help="semi-sync: followers that must apply a commit.")
@click.option("--timeout", "sync_timeout", type=POSITIVE_SECONDS,
              help="Seconds a commit waits for acknowledgements (sync: then fails; semi-sync: then degrades).")
@click.option("--retain-min-entries", type=click.IntRange(0),
              help="Keep at least the last N log entries even when every follower applied them.")
@click.option("--retain-max-bytes", type=click.IntRange(0), help="Log retention size limit (0: none).")
@click.option("--retain-max-age", type=SECONDS, help="Log retention age limit in seconds (0: none).")
@click.option("--auto-resync/--no-auto-resync", default=None,
              help="Re-seed followers left behind by retention from a new snapshot automatically.")
@click.option("--auto-failover/--no-auto-failover", default=None,
              help="Promote the most up-to-date follower when the leader fails (default on).")
@click.option("--failover-timeout", type=POSITIVE_SECONDS,
              help="Seconds without an answer from the leader before automatic failover (default 5).")
@click.option("--failover-cooldown", type=SECONDS,
              help="No automatic failover within this many seconds of the last one (default 60).")
@click.option("--failover-key-gap", type=click.IntRange(0),
              help="AUTOINCREMENT counters jump by this much when the old leader was unreachable.")
@click.option("--format", "log_format", type=click.Choice(logformats.names()),
              help="Switch the log format from the next transaction on (row, statement and mixed; entries "
                   "keep the format they were written in).")
@click.option("--json", "as_json", is_flag=True, help="Print the settings as JSON for machines.")
def config_(directory: str, log_format: str | None, mode: str | None, sync_followers: str | None,
            semi_sync_k: int | None,
            sync_timeout: float | None, retain_min_entries: int | None, retain_max_bytes: int | None,
            retain_max_age: float | None, auto_resync: bool | None, auto_failover: bool | None,
            failover_timeout: float | None, failover_cooldown: float | None,
            failover_key_gap: int | None, as_json: bool) -> None:
    """Show or change replication and failover settings; running clients pick them up at their
    next commit."""
    with _cluster(directory, replicate=False) as cluster:
        if log_format is not None and log_format != cluster.config.format:
            before = cluster.config.format
            lsn = cluster.switch_format(log_format)
            if not as_json:
                click.echo(f"log format {before} -> {log_format} after LSN {lsn}")
        names = None
        if sync_followers is not None:
            names = [n.strip() for n in sync_followers.split(",") if n.strip()]
        cluster.configure(mode=mode, sync_followers=names, semi_sync_k=semi_sync_k,
                          sync_timeout=sync_timeout, retain_min_entries=retain_min_entries,
                          retain_max_bytes=retain_max_bytes,
                          retain_max_age=retain_max_age, auto_resync=auto_resync,
                          auto_failover=auto_failover, failover_timeout=failover_timeout,
                          failover_cooldown=failover_cooldown, failover_key_gap=failover_key_gap)
        if _distributed(directory):
            from ..dist.setup import publish_settings

            publish_settings(directory)  # the cluster's settings: a node promoted later keeps them
        replication, health = cluster.replication_status(), cluster.health()
        if as_json:
            click.echo(json.dumps({"format": cluster.config.format, "row_image": cluster.config.row_image,
                                   "replication": replication, "failover": health}, indent=2))
            return
        click.echo(_mode_line(replication))
        click.echo(_failover_line(health))


@main.command("add-follower")
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("name")
@click.option("--file", "file_name", help="Database file in DIRECTORY (default NAME.db).")
@click.option("--sync", "sync_role", is_flag=True, help="Give the new follower the sync role.")
@click.option("--wait", default=30.0, show_default=True, type=SECONDS,
              help="Seconds to wait for it to catch up (0: return after the snapshot).")
def add_follower(directory: str, name: str, file_name: str | None, sync_role: bool, wait: float) -> None:
    """Add follower NAME online: a snapshot of the leader (backup API) at an exact LSN, then catch-up."""
    _embedded_only(directory, "run `replproxy join DIR --nats URL --cluster NAME --name NODE` on its machine")
    with _cluster(directory) as cluster:
        lsn = cluster.add_follower(name, file=file_name, replication="sync" if sync_role else "async")
        click.echo(f"{name}: snapshot at LSN {lsn} ({cluster.path_of(name)})")
        if wait > 0:
            target = cluster.wait_for_catchup(wait, nodes=[name])
            click.echo(f"{name}: caught up with LSN {target}")


@main.command("remove-follower")
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("name")
@click.option("--delete-file", is_flag=True, help="Also delete its database file.")
def remove_follower(directory: str, name: str, delete_file: bool) -> None:
    """Unregister follower NAME (its log retention slot goes with it). On a distributed cluster:
    forget a node gone for good (status, verify and sync commits stop counting it)."""
    if _distributed(directory):
        from ..dist.report import forget

        try:
            forget(directory, name)
        except Error as exc:
            _fail(str(exc))
        click.echo(f"{name} removed from the cluster's positions")
        return
    with _cluster(directory, replicate=False) as cluster:
        cluster.remove_follower(name, delete_file=delete_file)
        click.echo(f"{name} removed")


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("node")
@click.option("--wait", default=30.0, show_default=True, type=SECONDS,
              help="Seconds to wait for it to catch up (0: return after the snapshot).")
def resync(directory: str, node: str, wait: float) -> None:
    """Re-seed follower NODE from a new snapshot of the leader (after it fell behind retention)."""
    _embedded_only(directory, "stop the follower's `serve`, remove its directory and `replproxy join` again")
    with _cluster(directory) as cluster:
        lsn = cluster.resync(node)
        click.echo(f"{node}: re-seeded from a snapshot at LSN {lsn}")
        if wait > 0:
            click.echo(f"{node}: caught up with LSN {cluster.wait_for_catchup(wait, nodes=[node])}")


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--to", "to", default=None, help="Follower to promote (default: the most up-to-date).")
@click.option("--force", is_flag=True,
              help="Promote a target that is behind; the old leader's later entries are recorded "
                   "in DIR/lost-writes-epoch<N>.jsonl.")
@click.option("--timeout", default=10.0, show_default=True, type=SECONDS,
              help="Seconds to wait for the old leader's lock and for the target to catch up.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def failover(directory: str, to: str | None, force: bool, timeout: float, as_json: bool) -> None:
    """Make a follower the leader: fence the old leader, carry its log over, bump the epoch.

    Works with the leader stopped or its file gone; then the most up-to-date follower is promoted
    as it is, and the old leader is fenced and its unreplicated writes undone when it starts again."""
    _embedded_only(directory, "a follower takes over when the leader's lease expires (stop the leader's `serve`)")
    with _cluster(directory, replicate=False, require_leader=False) as cluster:
        result = cluster.failover(to, force=force, timeout=timeout)
    _print_result(result, as_json)


@main.command("stop-node")
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("node")
def stop_node(directory: str, node: str) -> None:
    """Stop NODE as if it had crashed: no process reads, writes or applies to it until
    start-node. A stopped leader is replaced by automatic failover after failover_timeout."""
    _embedded_only(directory, "stop that node's `replproxy serve`")
    with _cluster(directory, replicate=False, require_leader=False) as cluster:
        cluster.stop_node(node)
        config = cluster.config
        click.echo(f"{node} stopped")
        if node == config.leader.name:
            now = time.time()
            held = held_until(config, now + config.failover_timeout)
            if config.auto_failover and held is not None:
                click.echo(textwrap.fill(
                    f"automatic failover held until {iso_time(held)}: the last failover was at "
                    f"{iso_time(config.last_failover_at or now)} and failover_cooldown is "
                    f"{config.failover_cooldown:g}s (anti-flapping). Until then writes fail; "
                    f"`replproxy failover {directory}` or `replproxy start-node {directory} {node}` ends it "
                    "sooner", 80, break_on_hyphens=False, break_long_words=False))
            elif config.auto_failover:
                click.echo(f"automatic failover after {config.failover_timeout:g}s without the leader, "
                           "done by any process that has the cluster open (e.g. replproxy serve)")
            else:
                click.echo("automatic failover is off: writes fail until `replproxy failover` or "
                           "`replproxy start-node`")


@main.command("start-node")
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("node")
@click.option("--timeout", default=10.0, show_default=True, type=SECONDS,
              help="Seconds to wait for the node's write lock.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def start_node(directory: str, node: str, timeout: float, as_json: bool) -> None:
    """Start a stopped NODE. If it missed a failover it rejoins as a follower: its writes that never
    reached the new leader are written to DIR/lost-writes-epoch<N>.jsonl and undone."""
    _embedded_only(directory, "run `replproxy serve` on that node's directory")
    with _cluster(directory, replicate=False, require_leader=False) as cluster:
        result = cluster.start_node(node, timeout=timeout)
    _print_result(result, as_json)


class _UsageExitsThree(click.Command):
    """A command whose usage errors exit 3 (its own codes 1 and 2 mean something else)."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            exc.exit_code = VERIFY_ERROR
            raise


MAX_LSN = 2**63 - 1  # SQLite's largest integer
VERIFY_EXIT = {"identical": 0, "different": 1, "could-not-compare": 2}
VERIFY_ERROR = 3


@main.command(cls=_UsageExitsThree)
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--timeout", default=10.0, show_default=True, type=SECONDS,
              help="Seconds to wait for each follower's write lock (verify holds every follower, "
                   "brings it to the leader's LSN itself and compares it there).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def verify(directory: str, timeout: float, as_json: bool) -> None:
    """Compare schema and content of every user table on every node at exactly one LSN.

    Exit status: 0 identical; 1 different (a table differs, or a follower diverged or is ahead of
    the leader); 2 could not compare (a follower is paused, stopped, or its lock timed out);
    3 usage or cluster error."""
    if _distributed(directory):
        from ..dist.report import verify as dist_verify

        try:
            report = dist_verify(directory, timeout=timeout)
        except Exception as exc:  # exit 1 and 2 are answers: anything else is a cluster error
            _fail(_describe(exc), VERIFY_ERROR)
            return
    else:
        try:
            cluster = Cluster(directory)
        except Error as exc:
            _fail(str(exc), VERIFY_ERROR)
            return
        try:
            report = verify_cluster(cluster, timeout=timeout)
        except Exception as exc:  # exit 1 and 2 are answers: anything else is a cluster error
            _fail(_describe(exc), VERIFY_ERROR)
            return
        finally:
            cluster.close()
    outcome = report.outcome
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    elif outcome == "identical":
        click.echo(f"OK: {len(report.nodes)} nodes identical at LSN {report.lsn} "
                   f"({report.tables} tables compared)")
    else:
        head = "DIFFERENT" if outcome == "different" else "COULD NOT COMPARE"
        click.echo(f"{head} at LSN {report.lsn}:")
        for diff in report.differences:
            label = diff.object if diff.compared else "not compared"
            click.echo(f"  {diff.node}: {label}: {diff.detail}")
        if any(d.kind == "content" for d in report.differences):
            click.echo(f"re-seed a differing follower with `replproxy resync {directory} NODE`")
    sys.exit(VERIFY_EXIT[outcome])


@main.command("log")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--from", "from_lsn", default=1, show_default=True, type=click.IntRange(1, MAX_LSN),
              help="First LSN to show.")
@click.option("--limit", type=click.IntRange(0, MAX_LSN), help="Show at most this many entries.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry, one per line.")
def log_(directory: str, from_lsn: int, limit: int | None, as_json: bool) -> None:
    """Decode log entries for humans, like mysqlbinlog: LSN, epoch, time, and the changes. With a
    distributed node's directory or the cluster's URL, the entries of the cluster's stream."""
    if _distributed(directory):
        from ..dist.report import log_entries

        try:
            decoded, first = log_entries(directory, from_lsn, limit)
        except Error as exc:
            _fail(str(exc))
            return
        if from_lsn < first:
            click.echo(f"-- entries before LSN {first} were removed by stream retention", err=True)
    else:
        with _cluster(directory, replicate=False) as cluster:
            decoded = cluster.decode(cluster.entries(from_lsn, limit))
    for item in decoded:
        if as_json:
            click.echo(json.dumps(item.as_dict(), ensure_ascii=False))
        else:
            click.echo("\n".join(item.lines()))


def _hold(directory: str, node: str, action: str) -> None:
    _embedded_only(directory, "stop or start that follower's `replproxy serve`")
    with _cluster(directory, replicate=False) as cluster:
        getattr(cluster, action)(node)
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
@click.option("--mode", type=click.Choice(["table", "box", "csv", "json", "line", "list", "markdown", "tabs",
                                          "quote", "insert"]), default="table",
              show_default=True, help="Output format for rows (the shell's .mode changes it).")
@log_options("warning")
def shell(directory: str, create: bool, history_file: str | None, mode: str, log_level: str | None,
          verbose: int) -> None:
    """Interactive SQL shell on the cluster in DIRECTORY; each result says which node served it and at
    which LSN. With stdin not a terminal it runs the script it reads. `.help` lists dot-commands.

    DIRECTORY may also be a distributed cluster's URL (nats://HOST:PORT[,HOST:PORT]/CLUSTER) or a
    distributed follower's directory: the shell then works over NATS (docs/shell.md)."""
    from .shell import run_shell

    set_log_level(log_level, verbose, "warning")
    sys.exit(run_shell(directory, create=create, history=Path(history_file) if history_file else None,
                       mode=mode))


@main.command()
@click.option("--transactions", "-n", default=2000, show_default=True, type=click.IntRange(100),
              help="Transactions per write measurement.")
@click.option("--synchronous", "sync_levels", multiple=True, type=click.Choice(cfg.SYNCHRONOUS_LEVELS),
              help="PRAGMA synchronous levels to measure writes at (repeat for several; default: full and "
                   "normal).")
@click.option("--dir", "workdir", type=click.Path(file_okay=False),
              help="Where to create the benchmark databases (default: a temporary directory under the "
                   "current one, or under the system's when the current one is in memory).")
@click.option("--format", "log_format", type=click.Choice(logformats.names()),
              help="Measure only this log format (default: every format at synchronous=normal, row at the "
                   "other levels); trigger adds where a commit's time goes.")
@click.option("--imports", "imports_only", is_flag=True,
              help="Only measure the start-up cost: `import proxy` and `replproxy --help`.")
@click.option("--distributed", "distributed_only", is_flag=True,
              help="Only measure a distributed cluster: relay commit cost, lag, apply rate through the "
                   "stream, failover time (starts local nats-servers unless --nats is given).")
@click.option("--nats", "nats_urls", metavar="URL[,URL...]", help="With --distributed: use these NATS servers.")
@click.option("--repetitions", type=click.IntRange(1), default=None, hidden=True,
              help="At most this many repetitions of every measurement (a quick run, for tests).")
@log_options("warning")
def bench(transactions: int, sync_levels: tuple[str, ...], workdir: str | None, log_format: str | None,
          imports_only: bool, distributed_only: bool, nats_urls: str | None, repetitions: int | None,
          log_level: str | None, verbose: int) -> None:
    """Measure the proxy against plain SQLite in one run: commits per log format, follower apply rate,
    reads, log bytes, replication modes and start-up; ends with every target, PASS or MISS."""
    from .bench import run_bench
    from .bench.imports import report

    set_log_level(log_level, verbose, "warning")
    if imports_only:
        click.echo("\n".join(report()).lstrip("\n"))
        sys.exit(0)
    if distributed_only:
        from .bench import distributed

        for line in distributed.report(Path(workdir) if workdir else None, transactions, nats_urls):
            click.echo(line)
        sys.exit(0)

    options = {"repetitions": repetitions} if repetitions else {}
    sys.exit(run_bench(transactions=transactions, sync_levels=sync_levels or ("full", "normal"),
                       workdir=workdir, log_format=log_format, **options))


from .compare import compare_command  # noqa: E402  (replproxy compare: log formats on sample workloads)
from .nodes import join_command  # noqa: E402  (replproxy join: a follower on this machine)

main.add_command(compare_command)
main.add_command(join_command)




@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--lease-ttl", type=POSITIVE_SECONDS, help="Override the lease TTL of distributed.toml (seconds).")
@log_options("info")
def serve(directory: str, lease_ttl: float | None, log_level: str | None, verbose: int) -> None:
    """Run DIRECTORY's replication until stopped (Ctrl-C or SIGTERM).

    On the embedded default: keep the followers moving and watch the leader's health (automatic
    failover); optional, any process that opens the cluster does both too. On a node of a
    distributed cluster: the leader relays its log to the stream and renews its lease; a follower
    applies the stream and takes over when the leader's lease expires (docs/distributed.md)."""
    set_log_level(log_level, verbose, "info", timestamps=True)
    if not _distributed(directory):
        _serve_embedded(directory)
        return
    from .nodes import serve_node

    serve_node(directory, lease_ttl)


def _serve_embedded(directory: str) -> None:
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


if __name__ == "__main__":
    main()
