"""Crash safety: processes that write or apply are killed with SIGKILL at random points.

A writer subprocess commits transactions through the proxy and prints ("acknowledges") each one
after commit() returned; it is killed at a random moment drawn from a seeded RNG. Afterwards every
acknowledged write must be on the leader, no transaction may be half there, and once the cluster
is reopened every follower must hold exactly the leader's data, each entry applied once.

A second test kills a process that only runs the replicator while it is catching a follower up on a
large backlog, and checks the follower's data always matches its own applied LSN.

The seed comes from REPLPROXY_CRASH_SEED (default fixed) and is printed in every failure message.
Kill timing still varies from run to run: the seed fixes the plan, not the machine's speed.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
from helpers import (
    APPLIER_SCRIPT,
    CRASH_SEED,
    HANG,
    Child,
    applied_lsn,
    check_cluster,
    check_follower_at_its_position,
    check_groups,
    check_log,
    counter_of,
    create_tables,
    open_plain,
    rows_inserted_by_lsn,
    rows_of,
    write_backlog,
)

import proxy
from proxy.store import node as store_node

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

SEED = CRASH_SEED
# More for a soak run: REPLPROXY_CRASH_ITERATIONS=500.
WRITER_ITERATIONS = int(os.environ.get("REPLPROXY_CRASH_ITERATIONS", "24"))
APPLIER_ROUNDS = 5  # kills that land mid catch-up
APPLIER_ATTEMPTS = 4 * APPLIER_ROUNDS  # a kill that comes too late (all caught up) is retried

WRITER_SCRIPT = r'''
import random
import sys
import time

import proxy
from proxy.store import node as store_node

directory, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
conn = proxy.connect(directory)  # the process-wide cluster: its replicator moves the followers too
cur = conn.cursor()
cur.execute("BEGIN")  # inside a transaction reads go to the leader
cur.execute("SELECT coalesce(max(seq), 0) FROM t")
(last,) = cur.fetchone()
conn.rollback()
fillers = ["", "x", "héllo wörld ", "日本語テキスト", "\N{SNOWMAN}" * 3, "z" * 300]
started = time.monotonic()
i = 0
while time.monotonic() - started < 60:  # never outlive a test that lost track of it
    size = 5 if i % 5 == 4 else 1  # every 5th transaction is multi-row: checks atomicity
    first = last + 1
    for k in range(size):
        payload = f"{first}/{size}/{k}/" + rng.choice(fillers) * rng.randint(0, 3)
        cur.execute("INSERT INTO t(seq, payload) VALUES (?, ?)", (first + k, payload))
        cur.execute("UPDATE counter SET n = n + 1")
    conn.commit()
    last = first + size - 1
    sys.stdout.write(f"{first} {last}\n")  # acknowledged: commit() has returned
    sys.stdout.flush()
    i += 1
'''

# -- the writer is killed -------------------------------------------------------------------------


def test_writer_killed_at_random_points(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    directory = tmp_path / "cluster"
    cluster = proxy.Cluster.init(directory, followers=2)
    create_tables(directory, cluster)
    cluster.wait_for_catchup(10)
    cluster.close()
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT)
    leader_path = directory / "node1.db"

    acknowledged: set[int] = set()
    for iteration in range(WRITER_ITERATIONS):
        context = f"seed {SEED}, iteration {iteration}"
        child = Child(script, str(directory), str(rng.randrange(2**32)),
                      stderr_path=tmp_path / f"writer{iteration}.err")
        try:
            wanted = rng.randint(1, 25)
            if rng.random() < 0.5:
                mode, extra_acks, delay = "acks", rng.randint(0, 8), 0.0
            else:
                mode, extra_acks, delay = "delay", 0, rng.choice([rng.uniform(0.0001, 0.001),
                                                                  rng.uniform(0.001, 0.03)])
            lines: list[str] = []
            deadline = time.monotonic() + HANG
            while len(lines) < wanted + extra_acks:
                assert time.monotonic() < deadline, f"{context}: writer stalled: {child.stderr()}"
                got = child.read_lines(1.0)
                assert got or child.proc.poll() is None, f"{context}: writer died: {child.stderr()}"
                lines += got
            if delay:
                time.sleep(delay)
            lines += child.kill_and_drain()
        finally:
            child.close()
        for line in lines:
            first, last = map(int, line.split())
            acknowledged.update(range(first, last + 1))

        # The leader right after the crash, before anything reopens the cluster.
        rows = rows_of(leader_path)
        seqs = {seq for seq, _ in rows}
        missing = sorted(acknowledged - seqs)
        assert not missing, f"{context} ({mode}): acknowledged writes lost: {missing[:20]}"
        assert counter_of(leader_path) == len(rows), (
            f"{context}: counter {counter_of(leader_path)} but {len(rows)} rows: half a transaction")
        check_groups(rows, context)
        check_log(leader_path, context)
        # The writer's replicator was applying too: each follower holds whole transactions, a
        # prefix of the leader's, as far as its own applied LSN says.
        inserted = rows_inserted_by_lsn(directory)
        assert inserted[-1] == len(rows), f"{context}: the log inserts {inserted[-1]} rows, t has {len(rows)}"
        for name in ("node2", "node3"):
            path = directory / f"{name}.db"
            conn = open_plain(path)
            try:
                conn.execute("BEGIN")
                lsn = store_node.read_state(conn).applied_lsn
                (count,) = conn.execute("SELECT count(*) FROM t").fetchone()
                conn.execute("COMMIT")
            finally:
                conn.close()
            assert count == inserted[lsn], f"{context}: {name} at LSN {lsn} has {count} rows, not {inserted[lsn]}"
            follower_rows = rows_of(path)
            assert follower_rows == rows[:len(follower_rows)], f"{context}: {name} is not a prefix"
            assert counter_of(path) == len(follower_rows), f"{context}: {name} half applied"
            check_groups(follower_rows, f"{context}, {name}")

        report = check_cluster(directory, context)
        # Shown on failure: how far each kill got (rows committed but never acknowledged are fine).
        print(f"{context}: {mode} kill after {len(lines)} acks; {len(rows)} rows, "
              f"{len(seqs - acknowledged)} committed unacknowledged, LSN {report.lsn}")
    assert len(acknowledged) > WRITER_ITERATIONS


# -- the applier is killed ------------------------------------------------------------------------


def test_applier_killed_mid_catch_up(tmp_path: Path) -> None:
    rng = random.Random(SEED + 1)
    directory = tmp_path / "cluster"
    cluster = proxy.Cluster.init(directory, followers=2, replicate=False)
    base = create_tables(directory, cluster)
    follower_paths = [cluster.path_of(name) for name in cluster.followers]
    script = tmp_path / "applier.py"
    script.write_text(APPLIER_SCRIPT)
    written = 0
    mid_catch_up = 0
    try:
        # Timing decides whether a kill lands mid catch-up (a busy machine can let the applier
        # finish between two looks): kills that came too late are retried, up to a bound.
        for round_ in range(APPLIER_ATTEMPTS):
            if mid_catch_up == APPLIER_ROUNDS:
                break
            context = f"seed {SEED + 1}, round {round_}"
            leader_lsn = cluster.leader_lsn()
            behind = leader_lsn - min(applied_lsn(p) for p in follower_paths)
            if behind < 1000:
                count = 2000 if written == 0 else 1200
                write_backlog(directory, cluster, written + 1, count)
                written += count
                leader_lsn = cluster.leader_lsn()
            assert leader_lsn == base + written
            start = {p: applied_lsn(p) for p in follower_paths}
            child = Child(script, str(directory), stderr_path=tmp_path / f"applier{round_}.err")
            try:
                deadline = time.monotonic() + HANG
                while not any(start[p] < applied_lsn(p) < leader_lsn for p in follower_paths):
                    assert time.monotonic() < deadline, f"{context}: no progress: {child.stderr()}"
                    assert child.proc.poll() is None, f"{context}: applier died: {child.stderr()}"
                    if all(applied_lsn(p) >= leader_lsn for p in follower_paths):
                        break  # too fast to catch in the middle this time
                    time.sleep(0.0005)
                # A random extra moment, cut short once a follower is done (the kill must land
                # while the applier still has work).
                until = time.monotonic() + rng.choice([0.0, rng.uniform(0.0, 0.01), rng.uniform(0.01, 0.08)])
                while time.monotonic() < until and all(applied_lsn(p) < leader_lsn for p in follower_paths):
                    time.sleep(0.0005)
                child.kill_and_drain()
            finally:
                child.close()
            positions = [check_follower_at_its_position(p, base, context) for p in follower_paths]
            progressed = any(lsn > start[p] for p, lsn in zip(follower_paths, positions, strict=True))
            if progressed and any(lsn < leader_lsn for lsn in positions):
                mid_catch_up += 1  # killed with work done and work left
            print(f"{context}: killed with followers at {positions} of {leader_lsn}")
    finally:
        cluster.close()
    assert mid_catch_up == APPLIER_ROUNDS, (
        f"only {mid_catch_up} of {APPLIER_ATTEMPTS} kills landed mid catch-up")

    report = check_cluster(directory, f"seed {SEED + 1}, final")
    assert report.lsn == base + written
    for path in follower_paths:
        assert check_follower_at_its_position(path, base, "final") == base + written
        assert len(rows_of(path)) == written
