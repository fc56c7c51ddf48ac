"""The leader's lease: one key in the cluster's lease bucket, `{"node", "epoch", "ttl"}`.

The holder renews it by compare-and-set on its revision every `ttl / 4` seconds. A candidate takes
it over only by compare-and-set on the revision it has watched stay unchanged for `ttl` seconds of
its own clock (or by creating it when absent), so a decision never rests on a plain read, and no
two machines' clocks are compared. The holder counts its lease from the moment it *sent* the
renewal and stops writing `SAFETY` earlier than `ttl` after it: a candidate first saw that revision
no earlier than it was written, so it cannot take over before the holder has stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import TransportError
from ..jetstream.kv import ClusterKV
from ..jetstream.names import LEASE_KEY

SAFETY = 0.25  # the share of the TTL the holder gives up, for clock-rate differences and delays


@dataclass(frozen=True)
class Holder:
    node: str
    epoch: int
    ttl: float
    revision: int


class Lease:
    """One node's side of the lease (holder or candidate). `clock`: monotonic seconds."""

    def __init__(self, kv: ClusterKV, node: str, ttl: float, *, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time):
        self.kv = kv
        self.node = node
        self.ttl = ttl
        self.clock = clock
        self.wall_clock = wall_clock
        self.revision: int | None = None  # ours, while we hold it
        self.epoch: int | None = None
        self.valid_until: float | None = None  # monotonic
        self.valid_until_wall: float | None = None
        self._seen: tuple[int, float] | None = None  # (revision, when first seen) as candidate

    # -- holder ---------------------------------------------------------------------------------

    def _value(self, epoch: int) -> dict[str, Any]:
        return {"node": self.node, "epoch": epoch, "ttl": self.ttl}

    def _granted(self, revision: int, epoch: int, sent: float, sent_wall: float) -> None:
        self.revision, self.epoch = revision, epoch
        keep = self.ttl * (1 - SAFETY)
        self.valid_until, self.valid_until_wall = sent + keep, sent_wall + keep

    def acquire(self, epoch: int) -> bool:
        """Create the lease for `epoch` if nobody holds it."""
        sent, sent_wall = self.clock(), self.wall_clock()
        revision = self.kv.create(LEASE_KEY, self._value(epoch))
        if revision is None:
            return False
        self._granted(revision, epoch, sent, sent_wall)
        return True

    def renew(self) -> bool:
        """Extend our lease; False if it is no longer ours (another node took it)."""
        if self.revision is None or self.epoch is None:
            return False
        sent, sent_wall = self.clock(), self.wall_clock()
        revision = self.kv.update(LEASE_KEY, self._value(self.epoch), self.revision)
        if revision is None:
            # A renewal that timed out may have landed after all, moving the revision: the key
            # then still names us at our epoch (nobody else writes that), and we go on from it.
            found = self.kv.get(LEASE_KEY)
            value = found.value if found is not None and isinstance(found.value, dict) else {}
            if (found is not None and found.revision != self.revision and value.get("node") == self.node
                    and int(value.get("epoch", 0)) == self.epoch):
                sent, sent_wall = self.clock(), self.wall_clock()
                revision = self.kv.update(LEASE_KEY, self._value(self.epoch), found.revision)
        if revision is None:
            self.lose()
            return False
        self._granted(revision, self.epoch, sent, sent_wall)
        return True

    @property
    def held(self) -> bool:
        return self.valid_until is not None and self.clock() < self.valid_until

    def lose(self) -> None:
        self.revision = self.valid_until = self.valid_until_wall = None

    # -- candidate ------------------------------------------------------------------------------

    def holder(self) -> Holder | None:
        try:
            found = self.kv.get(LEASE_KEY)
        except TransportError:
            self.reset()  # time NATS was unavailable to us may have been so to the holder too
            raise
        if found is None or not isinstance(found.value, dict):
            self._seen = None
            return None
        value = found.value
        return Holder(str(value.get("node")), int(value.get("epoch", 0)), float(value.get("ttl", self.ttl)),
                      found.revision)

    def reset(self) -> None:
        """Forget how long the current holder has been seen unchanged: a candidate counts only
        time during which it could reach NATS itself (so the holder could have renewed)."""
        self._seen = None

    def expired(self, holder: Holder | None) -> bool:
        """Whether `holder` (None: nobody) has not renewed for a whole TTL, by our own clock."""
        if holder is None:
            return True
        now = self.clock()
        if self._seen is None or self._seen[0] != holder.revision:
            self._seen = (holder.revision, now)
            return False
        return now - self._seen[1] >= holder.ttl

    def take(self, holder: Holder | None, epoch: int) -> bool:
        """Take the lease from an expired `holder` (or create it) for `epoch`."""
        sent, sent_wall = self.clock(), self.wall_clock()
        if holder is None:
            revision = self.kv.create(LEASE_KEY, self._value(epoch))
        else:
            revision = self.kv.update(LEASE_KEY, self._value(epoch), holder.revision)
        self._seen = None
        if revision is None:
            return False
        self._granted(revision, epoch, sent, sent_wall)
        return True
