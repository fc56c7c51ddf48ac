"""The command-line side of distributed nodes (docs/distributed.md): `join`, the node `serve`
runs, and `status` of a distributed cluster."""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import time
from typing import Any

import click

from ..errors import Error, TransportError
from .render import echo_errors, render


def _fail(message: str) -> None:
    click.echo(f"replproxy: {message}", err=True)
    sys.exit(1)


def _positive_seconds(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"{value!r} is not a positive number of seconds")
    return value


@click.command("join")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--nats", "nats_urls", required=True, metavar="URL[,URL...]", help="The cluster's NATS servers.")
@click.option("--cluster", "cluster_name", required=True, help="The cluster's name (as given to `init`).")
@click.option("--name", "node_name", required=True, help="This node's name (unique in the cluster).")
@click.option("--nats-creds", type=click.Path(exists=True, dir_okay=False), help="NATS credentials file.")
@click.option("--timeout", default=600.0, show_default=True, type=float, callback=_positive_seconds,
              help="Seconds to wait for the leader's snapshot.")
def join_command(directory: str, nats_urls: str, cluster_name: str, node_name: str, nats_creds: str | None,
                 timeout: float) -> None:
    """Create a follower of a distributed cluster in DIRECTORY, on this machine, from a snapshot of
    the leader (through the NATS object store); then run it with `replproxy serve DIRECTORY`."""
    from ..dist.setup import join as join_cluster

    try:
        lsn = join_cluster(directory, nats=nats_urls, cluster=cluster_name, name=node_name, creds=nats_creds,
                           timeout=timeout)
    except Error as exc:
        _fail(str(exc))
        return
    click.echo(f"{node_name} joined cluster {cluster_name!r} from a snapshot at LSN {lsn}: run "
               f"`replproxy serve {directory}`")


def print_status(directory: str, as_json: bool) -> None:
    from ..dist.report import status as dist_status

    try:
        report = dist_status(directory)
    except Error as exc:
        _fail(str(exc))
        return
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    stream = report["stream"]
    click.echo(f"cluster {report['cluster']} (format {report['format']}, mode {report['mode']}): leader "
               f"{report['leader'] or 'NONE'} at epoch {report['epoch']}, stream {stream['name']} at LSN "
               f"{stream['last_lsn']} (R{stream['replicas']})")
    headers = ["node", "role", "LSN", "lag", "published", "state", "host", "heard (s ago)"]
    rows = [[n["name"], n["role"], n["lsn"], "" if n["lag_entries"] is None else n["lag_entries"],
             "" if n["published"] is None else n["published"], n["state"], n["host"] or "", n["heard_s_ago"]]
            for n in report["nodes"]]
    click.echo(render(headers, rows), nl=False)
    echo_errors((n["name"], n["error"]) for n in report["nodes"])


def serve_node(directory: str, lease_ttl: float | None) -> None:
    """Run a distributed node until SIGTERM or Ctrl-C."""
    from ..dist.service import NodeService

    stopping = False

    def _stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    warned = False
    while True:  # NATS may be briefly unavailable (a server restarting, an election): keep trying
        try:
            service = NodeService(directory, lease_ttl=lease_ttl)
            break
        except TransportError as exc:
            if not warned:
                logging.getLogger("replproxy.dist").warning("%s: cannot start yet: %s (retrying)", directory, exc)
                warned = True
            if stopping:
                return
            time.sleep(1.0)
        except Error as exc:
            _fail(str(exc))
            return
        except KeyboardInterrupt:
            return
    if stopping:
        return
    signal.signal(signal.SIGTERM, lambda *_: service.stop())
    try:
        service.run()
    except KeyboardInterrupt:
        service.stop()
