"""Does a follower's recorded position agree with its own content and with the leader's log?

A follower keeps a copy of every entry it applied (lsn, epoch, checksum), written in the apply
transaction, and its applied position beside it. So:

- its copy ending past its position, or before it, or skipping an entry, means the position was
  changed outside replproxy (the data holds more, or less, than the position says);
- a position past the leader's last LSN means the leader's file is older than what its followers
  applied (restored from an older backup);
- an entry of its copy that is not the leader's entry at that LSN (other epoch or checksum) means
  the leader's log no longer continues what the follower applied (a fork).

`status` and `verify` both ask; neither trusts a position these contradict.
"""

from __future__ import annotations

from dataclasses import dataclass

import apsw

from ..store import log as entries_log
from ..store.node import NodeState

DIVERGED = "diverged"
AHEAD = "ahead-of-leader"


_SUMS = ("SELECT count(*), total(checksum), total(epoch * lsn), total((checksum % 1000003) * lsn) "
         "FROM _replproxy_log WHERE lsn BETWEEN ? AND ?")


@dataclass(frozen=True)
class Divergence:
    """Why a follower's position cannot be trusted: `kind` is DIVERGED or AHEAD."""

    kind: str
    message: str


def check(name: str, follower: apsw.Connection, state: NodeState, leader: apsw.Connection,
          hint: str) -> Divergence | None:
    """The first contradiction between follower `name` (its `state`, read in the caller's
    transaction on `follower`) and the leader; None when there is none. `leader` is read at its
    latest state or inside the caller's read transaction."""
    applied = state.applied_lsn
    first, last, count = follower.execute(
        "SELECT min(lsn), max(lsn), count(*) FROM _replproxy_log").fetchone()
    if last is not None and last != applied:
        held = "more" if last > applied else "less"
        return Divergence(DIVERGED, (
            f"{name}: its applied position says LSN {applied} but it holds the entries it applied up "
            f"to LSN {last} ({held} than the position says): the position was changed outside "
            f"replproxy; {hint}"))
    if last is not None and count != last - first + 1:
        (gap,) = follower.execute(
            "SELECT min(lsn) + 1 FROM _replproxy_log AS a WHERE lsn < ? AND NOT EXISTS "
            "(SELECT 1 FROM _replproxy_log AS b WHERE b.lsn = a.lsn + 1)", (last,)).fetchone()
        return Divergence(DIVERGED, (
            f"{name}: its copy of the entries it applied skips entry {gap}: its position was changed "
            f"outside replproxy and that entry was never applied; {hint}"))
    leader_lsn = entries_log.last_lsn(leader)
    if applied > leader_lsn:
        return Divergence(AHEAD, (
            f"{name}: it has applied up to LSN {applied} but the leader's log ends at LSN "
            f"{leader_lsn}: the leader's file is older than what its followers applied (restored "
            f"from an older backup?); {hint} (this discards what the leader lacks), or make it the "
            f"leader with `replproxy failover --to {name}`"))
    if applied == 0:
        return None
    if last is None:
        # No copy (a fresh snapshot): the epoch it recorded for its position is all there is.
        row = leader.execute("SELECT epoch FROM _replproxy_log WHERE lsn = ?", (applied,)).fetchone()
        if row is not None and state.applied_epoch and row[0] != state.applied_epoch:
            return Divergence(DIVERGED, (
                f"{name}: it applied entry {applied} of epoch {state.applied_epoch}, but the leader's "
                f"entry {applied} is of epoch {row[0]}: the leader's log no longer continues what it "
                f"applied; {hint}"))
        return None
    (leader_first,) = leader.execute("SELECT min(lsn) FROM _replproxy_log").fetchone()
    if leader_first is None:
        return None
    span = (max(first, leader_first), applied)
    # Both logs are contiguous over the span: equal sums first (cheap, `status` runs this at every
    # shell prompt), then the entries themselves to name the first that differs.
    if follower.execute(_SUMS, span).fetchone() == leader.execute(_SUMS, span).fetchone():
        return None
    sql = "SELECT lsn, epoch, checksum FROM _replproxy_log WHERE lsn BETWEEN ? AND ? ORDER BY lsn"
    mine = {lsn: (epoch, crc) for lsn, epoch, crc in follower.execute(sql, span)}
    for lsn, epoch, crc in leader.execute(sql, span):
        own = mine.get(lsn)
        if own is not None and own != (epoch, crc):
            return Divergence(DIVERGED, (
                f"{name}: the entry {lsn} it applied (epoch {own[0]}, checksum {own[1]}) is not the "
                f"leader's entry {lsn} (epoch {epoch}, checksum {crc}): the leader's log no longer "
                f"continues what it applied; {hint}"))
    return None
