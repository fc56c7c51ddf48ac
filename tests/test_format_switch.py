"""`replproxy config DIR --format NAME`: the log format of a running cluster switched at an LSN
boundary, as MySQL's binlog_format can be; followers apply each entry by its own format."""

from __future__ import annotations

import json
import threading

import pytest
from checks import assert_identical
from click.testing import CliRunner
from helpers import HANG

import proxy
from proxy.tools.cli import main
from proxy.tools.workloads import WORKLOADS


def _config(cluster: proxy.Cluster, *args: str) -> str:
    result = CliRunner().invoke(main, ["config", str(cluster.directory), *args])
    assert result.exit_code == 0, result.output
    return result.output


def _formats(cluster: proxy.Cluster, after: int = 0) -> list[str]:
    return [entry.format for entry in cluster.entries(after + 1)]


def test_a_running_connection_captures_in_the_new_format_from_the_switch_on(make_cluster) -> None:
    cluster = make_cluster(format="row")
    conn = proxy.connect(cluster.directory, cluster=cluster)
    WORKLOADS["transactions"](conn, 1)  # its own tables, in the row format
    start = cluster.leader_lsn()
    out = _config(cluster, "--format", "statement")  # another Cluster, as another process would be
    assert f"log format row -> statement after LSN {start}" in out
    WORKLOADS["bulk"](conn, 1)
    middle = cluster.leader_lsn()
    _config(cluster, "--format", "mixed")
    WORKLOADS["nondeterministic"](conn, 1)
    end = cluster.leader_lsn()
    _config(cluster, "--format", "row")
    conn.execute("UPDATE events SET kind = kind || '!'")
    conn.commit()
    formats = _formats(cluster)
    assert set(formats[:start]) == {"row"}
    assert set(formats[start:middle]) == {"statement"} and middle > start
    assert set(formats[middle:end]) == {"mixed"} and end > middle
    assert formats[end:] == ["row"]
    cluster.wait_for_catchup(HANG)
    assert_identical(cluster)
    status = json.loads(CliRunner().invoke(main, ["config", str(cluster.directory), "--json"]).output)
    assert status["format"] == "row"
    assert status["replication"]["format_switch"] == {"from": "mixed", "to": "row", "after_lsn": end}
    conn.close()


def test_a_transaction_open_during_the_switch_keeps_its_format_and_the_next_one_has_the_new(make_cluster) -> None:
    cluster = make_cluster(format="row")
    conn = proxy.connect(cluster.directory, cluster=cluster)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("INSERT INTO t(v) VALUES ('before')")  # holds the write lock until commit
    switched: list[int] = []
    other = proxy.Cluster(cluster.directory, replicate=False)
    switch = threading.Thread(target=lambda: switched.append(other.switch_format("statement")))
    switch.start()
    conn.execute("INSERT INTO t(v) VALUES ('same transaction')")
    conn.commit()  # the switch gets the lock only now
    switch.join(HANG)
    assert not switch.is_alive() and switched == [cluster.leader_lsn()]
    conn.execute("INSERT INTO t(v) VALUES ('after')")
    conn.commit()
    assert _formats(cluster) == ["row", "row", "statement"]  # CREATE, the open transaction, the next
    other.close()
    cluster.wait_for_catchup(HANG)
    assert_identical(cluster)
    conn.close()


def test_switching_to_or_from_trigger_is_refused_saying_why(make_cluster) -> None:
    cluster = make_cluster(format="row")
    result = CliRunner().invoke(main, ["config", str(cluster.directory), "--format", "trigger"])
    assert result.exit_code == 1 and "not supported" in result.output and "--from" in result.output
    assert cluster.config.format == "row"
    trigger = make_cluster("t", format="trigger")
    with pytest.raises(proxy.ClusterError, match="trigger"):
        trigger.switch_format("row")


def test_log_shows_each_entry_in_its_own_format(make_cluster) -> None:
    cluster = make_cluster(format="row")
    conn = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    cluster.switch_format("statement")
    conn.execute("INSERT INTO t(v) VALUES ('x')")
    out = CliRunner().invoke(main, ["log", str(cluster.directory), "--json"]).output
    entries = [json.loads(line) for line in out.splitlines()]
    assert [e["format"] for e in entries] == ["row", "statement"]
    conn.close()
