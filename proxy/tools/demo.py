"""`replproxy demo`: a guided tour of replication on the embedded default."""

from __future__ import annotations

from pathlib import Path

import click

from ..cluster import Cluster
from ..cluster.verify import verify
from ..driver import connect
from ..store import config as cfg
from .render import render


def _step(text: str) -> None:
    click.echo("")
    click.secho(f"== {text}", bold=True)


def run_demo(directory: str) -> int:
    path = Path(directory)
    if cfg.config_path(path).exists():
        _step(f"Reusing the demo cluster in {path}")
        cluster = Cluster(path)
    else:
        _step(f"Creating a cluster in {path}: one leader and two followers, row-based log")
        cluster = Cluster.init(path, followers=2)
    first, second = cluster.followers[:2]
    for node in cluster.config.nodes:
        click.echo(f"  {node.name}: {node.role:8} {path / node.file}")

    conn = connect(path, cluster=cluster)
    cur = conn.cursor()
    _step("Writing through the DB-API driver (writes always go to the leader)")
    cur.execute("CREATE TABLE IF NOT EXISTS comments(id INTEGER PRIMARY KEY, author TEXT, body TEXT)")
    cur.executemany("INSERT INTO comments(author, body) VALUES (?, ?)",
                    [("alice", "Replication is fun"), ("bob", "Followers replay the log")])
    conn.commit()
    click.echo(f"  committed on {cur.node}; the log entry has LSN {conn.last_write_lsn}")

    _step("Reading: a follower that has applied our last write serves it")
    cluster.wait_for_catchup(10)
    cur.execute("SELECT count(*) FROM comments")
    click.echo(f"  {cur.fetchone()[0]} comments, served by {cur.node} at LSN {cur.lsn}")

    _step(f"Injecting lag: pausing {second}, then posting a comment")
    cluster.pause(second)
    cur.execute("INSERT INTO comments(author, body) VALUES (?, ?)", ("carol", "Did my comment get lost?"))
    conn.commit()
    click.echo(f"  committed at LSN {conn.last_write_lsn}")
    cluster.wait_for_catchup(10, nodes=[first])
    cur.execute("SELECT author, body FROM comments ORDER BY id DESC LIMIT 1")
    click.echo(f"  read-your-writes: {cur.fetchone()} served by {cur.node}")
    stale = connect(path, cluster=cluster, node=second)
    count = stale.execute("SELECT count(*) FROM comments").fetchone()[0]
    click.echo(f"  a reader pinned to {second} sees {count} comments: the paused follower is behind")
    stale.close()

    _step(f"Resuming {second}: it catches up from its own position")
    cluster.resume(second)
    cluster.wait_for_catchup(10)
    status = cluster.status()
    click.echo(render(["node", "role", "applied LSN", "lag", "state"],
                      [[s.name, s.role, s.applied_lsn, s.lag_entries, s.state] for s in status]), nl=False)

    _step(f"Crashing the leader {cluster.leader} (replproxy stop-node): automatic failover")
    # Demo settings: a short health-check timeout, and no anti-flapping hold between reruns.
    cluster.configure(failover_timeout=1.0, failover_cooldown=0.0)
    old = cluster.leader
    cluster.stop_node(old)
    click.echo(f"  {old} stopped; every process with the cluster open probes the leader and, after "
               f"1 s without an answer, promotes the most up-to-date follower")
    cur.execute("INSERT INTO comments(author, body) VALUES (?, ?)", ("dave", "Posted during the failover"))
    conn.commit()
    click.echo(f"  the same connection, never reopened, committed on {cur.node} "
               f"(epoch {cluster.epoch}) at LSN {conn.last_write_lsn}")

    _step(f"Restarting {old} (replproxy start-node): it rejoins as a follower of {cluster.leader}")
    for line in cluster.start_node(old).lines():
        click.echo(f"  {line}")
    cluster.wait_for_catchup(10)

    _step("Verifying that every follower is identical to the leader")
    report = verify(cluster)
    conn.close()
    cluster.close()
    if report.identical:
        click.echo(f"  OK: {len(report.nodes)} nodes identical at LSN {report.lsn}")
    else:
        for diff in report.differences:
            click.echo(f"  {diff.node}: {diff.object}: {diff.detail}")
    click.echo("")
    click.echo(f"Next: replproxy log {path}   |   replproxy status {path}   |   "
               f"replproxy exec {path} \"SELECT * FROM comments\"   |   replproxy shell {path}")
    return 0 if report.identical else 1
