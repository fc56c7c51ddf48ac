"""The leader's lease (proxy/dist/lease.py) against a real nats-server's key-value bucket, with the
time of every node given by a clock the test moves: a candidate takes the lease over only after
watching the same revision for a whole TTL of its own clock, by compare-and-set on that revision;
the holder stops counting itself the leader SAFETY earlier, from the moment it sent its renewal;
of two candidates racing, exactly one wins.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import HANG, ManualClock

from proxy.dist.lease import SAFETY, Lease
from proxy.jetstream.bridge import Bridge
from proxy.jetstream.kv import ClusterKV
from proxy.jetstream.names import LEASE_KEY, Names

TTL = 10.0
NAMES = Names("leasetest")


@pytest.fixture
def nats_url(nats_server: Any) -> str:
    return nats_server.url


@pytest.fixture
def kv(nats_url: str) -> Iterator[ClusterKV]:
    with Bridge(nats_url) as bridge:
        kv = ClusterKV(bridge, NAMES)
        kv.ensure()
        yield kv


def lease(kv: ClusterKV, node: str, start: float) -> tuple[Lease, ManualClock]:
    """A node's lease side with its own clock (the clocks of two nodes are never compared, so each
    starts somewhere else)."""
    clock = ManualClock(start)
    return Lease(kv, node, TTL, clock=clock, wall_clock=clock), clock


def test_a_candidate_takes_over_only_after_watching_one_revision_for_a_ttl(kv: ClusterKV) -> None:
    a, a_clock = lease(kv, "a", 100.0)
    b, b_clock = lease(kv, "b", 50_000.0)
    assert a.acquire(epoch=1)
    assert a.held and a.epoch == 1
    assert not b.acquire(epoch=2)  # somebody holds it
    assert not b.held

    holder = b.holder()
    assert holder is not None
    assert (holder.node, holder.epoch, holder.ttl, holder.revision) == ("a", 1, TTL, a.revision)
    assert not b.expired(holder)  # first seen now, by b's clock
    b_clock.advance(TTL / 2)
    a_clock.advance(TTL / 2)  # a's clock means nothing to b
    assert not b.expired(b.holder())

    # The holder renews: a new revision, which the candidate watches from the start again.
    assert a.renew()
    renewed = b.holder()
    assert renewed.revision != holder.revision
    b_clock.advance(TTL / 2)  # a whole TTL since b first saw the old revision
    assert not b.expired(renewed)
    assert not b.take(holder, epoch=2)  # a take on the old revision is refused
    assert a.held and kv.get(LEASE_KEY).value["node"] == "a"

    assert not b.expired(b.holder())
    b_clock.advance(TTL - 0.001)
    assert not b.expired(b.holder())
    b_clock.advance(0.001)
    current = b.holder()
    assert b.expired(current)
    assert b.take(current, epoch=2)
    assert b.held and b.epoch == 2
    assert kv.get(LEASE_KEY).value == {"node": "b", "epoch": 2, "ttl": TTL}

    # The old holder learns it at its next renewal (its own clock says nothing yet).
    assert a.held
    assert not a.renew()
    assert not a.held and a.revision is None
    assert not a.renew()
    assert b.renew() and b.held


def test_the_holder_stops_safety_before_the_ttl_counted_from_when_it_sent(kv: ClusterKV) -> None:
    a, clock = lease(kv, "a", 10.0)

    class SlowKV:
        """The real bucket, with the round trip taking `delay` seconds of a's clock."""

        delay = 0.0

        def __getattr__(self, name: str) -> Any:
            return getattr(kv, name)

        def create(self, key: str, value: Any) -> int | None:
            clock.advance(self.delay)
            return kv.create(key, value)

        def update(self, key: str, value: Any, revision: int) -> int | None:
            clock.advance(self.delay)
            return kv.update(key, value, revision)

    slow = SlowKV()
    a.kv = slow  # type: ignore[assignment]
    keep = TTL * (1 - SAFETY)

    slow.delay = 1.0
    sent = clock()
    assert a.acquire(epoch=1)
    assert a.valid_until == pytest.approx(sent + keep)  # from the request, not the reply
    clock.advance(keep - 1.0 - 0.001)
    assert a.held
    clock.advance(0.001)
    assert not a.held

    # Nobody took it: a renewal (compare-and-set on its revision) still succeeds and counts anew.
    slow.delay = 0.0
    assert a.renew() and a.held
    clock.advance(keep - 0.001)
    assert a.held
    clock.advance(0.001)
    assert not a.held
    assert a.wall_clock() >= a.valid_until_wall  # the wall-clock bound moves with it


def test_two_candidates_racing_on_the_same_revision_exactly_one_wins(nats_url: str, kv: ClusterKV) -> None:
    bridges = [Bridge(nats_url), Bridge(nats_url)]  # separate connections, as two machines
    try:
        candidates = []
        for n, bridge in enumerate(bridges):
            own = ClusterKV(bridge, NAMES)
            own.ensure()
            candidates.append(lease(own, f"c{n}", 1000.0 * (n + 1)))
        first, _ = lease(kv, "first", 0.0)
        assert first.acquire(epoch=1)
        for epoch in range(2, 8):  # each round the lease is taken from the last winner
            holders = []
            for candidate, clock in candidates:
                holder = candidate.holder()
                assert not candidate.expired(holder)
                clock.advance(holder.ttl)
                assert candidate.expired(holder)
                holders.append(holder)
            assert holders[0].revision == holders[1].revision
            takes = [lambda c=c, h=h, e=epoch: c.take(h, e) for (c, _), h in zip(candidates, holders, strict=True)]
            results = race(takes)
            assert sorted(results) == [False, True], results
            winner = candidates[results.index(True)][0]
            loser = candidates[results.index(False)][0]
            assert winner.held and not loser.held
            assert kv.get(LEASE_KEY).value == {"node": winner.node, "epoch": epoch, "ttl": TTL}
            winner.lose()  # it stops renewing; the next round takes it from the winner
        # Creating a missing lease is a race with one winner too.
        kv.delete(LEASE_KEY)
        # Both decide before either acts (a candidate reading the other's new lease could take it
        # over by compare-and-set, legitimately: the caller checks expiry, not `take`).
        assert [c.holder() for c, _ in candidates] == [None, None]
        results = race([lambda c=c: c.take(None, 99) for c, _ in candidates])
        assert sorted(results) == [False, True], results
        assert kv.get(LEASE_KEY).value["epoch"] == 99
    finally:
        for bridge in bridges:
            bridge.close()


def race(actions: list[Any]) -> list[Any]:
    """Run `actions` in threads released at once; their results in order."""
    barrier = threading.Barrier(len(actions))
    results: list[Any] = [None] * len(actions)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(HANG)
            results[index] = actions[index]()
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(actions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)
    return results
