"""The cluster's key-value buckets: shared settings, the epoch history, every node's position, and
the leader's lease. Shared decisions are made by compare-and-set on a key's revision, never from a
plain read (a read can be stale after a server failure)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .bridge import Bridge
from .names import LEASE_KEY, Names, node_key


@dataclass(frozen=True)
class Versioned:
    value: dict[str, Any] | list[Any]
    revision: int


class ClusterKV:
    """The buckets of one cluster."""

    def __init__(self, bridge: Bridge, names: Names):
        self.bridge = bridge
        self.names = names
        self._buckets: dict[str, Any] = {}

    def ensure(self, replicas: int = 1) -> None:
        """Create the buckets if they do not exist."""
        self.bridge.call(self._bucket(self.names.bucket, create=True, replicas=replicas, history=5),
                         what="creating the settings bucket")
        self.bridge.call(self._bucket(self.names.lease_bucket, create=True, replicas=replicas, history=1),
                         what="creating the lease bucket")

    async def _bucket(self, name: str, *, create: bool = False, replicas: int = 1, history: int = 1) -> Any:
        bucket = self._buckets.get(name)
        if bucket is not None:
            return bucket
        from nats.js.errors import BucketNotFoundError, NotFoundError

        try:
            bucket = await self.bridge.js.key_value(name)
        except (BucketNotFoundError, NotFoundError):
            if not create:
                raise
            bucket = await self.bridge.js.create_key_value(bucket=name, history=history, replicas=replicas)
        self._buckets[name] = bucket
        return bucket

    def _bucket_of(self, key: str) -> str:
        return self.names.lease_bucket if key == LEASE_KEY else self.names.bucket

    # -- operations -----------------------------------------------------------------------------

    def get(self, key: str) -> Versioned | None:
        return self.bridge.call(self._get(key), what=f"reading {key}")

    async def _get(self, key: str) -> Versioned | None:
        from nats.js.errors import BucketNotFoundError, KeyDeletedError, KeyNotFoundError, NotFoundError

        try:
            bucket = await self._bucket(self._bucket_of(key))
        except (BucketNotFoundError, NotFoundError):
            return None  # no such cluster on these servers: callers say so in their words
        try:
            entry = await bucket.get(key)
        except (KeyNotFoundError, KeyDeletedError, NotFoundError):
            return None
        if not entry.value:
            return None
        return Versioned(json.loads(entry.value), int(entry.revision))

    def create(self, key: str, value: Any) -> int | None:
        """Store `value` under `key` if the key does not exist; its revision, or None if it does."""
        return self.bridge.call(self._cas(key, value, None), what=f"creating {key}")

    def update(self, key: str, value: Any, revision: int) -> int | None:
        """Store `value` if `key` is still at `revision`; the new revision, or None if it moved."""
        return self.bridge.call(self._cas(key, value, revision), what=f"updating {key}")

    async def _cas(self, key: str, value: Any, revision: int | None) -> int | None:
        from nats.js.errors import KeyWrongLastSequenceError

        bucket = await self._bucket(self._bucket_of(key))
        data = _dump(value)
        try:
            if revision is None:
                return int(await bucket.create(key, data))
            return int(await bucket.update(key, data, last=revision))
        except KeyWrongLastSequenceError:
            return None

    def put(self, key: str, value: Any) -> int:
        """Store `value` unconditionally (a node's own position: only that node writes it)."""
        async def run() -> int:
            bucket = await self._bucket(self._bucket_of(key))
            return int(await bucket.put(key, _dump(value)))

        return self.bridge.call(run(), what=f"writing {key}")

    def delete(self, key: str) -> None:
        async def run() -> None:
            bucket = await self._bucket(self._bucket_of(key))
            await bucket.delete(key)

        self.bridge.call(run(), what=f"deleting {key}")

    def nodes(self) -> dict[str, dict[str, Any]]:
        """Every node's last published position, by name: every `node.*` key the bucket's stream
        holds when it is asked (one stream-info request lists them), each read at its last value.

        Not nats-py's `KeyValue.keys()`: its watcher decides it has seen every key from a pending
        count that races with delivery (under load it answers with no key at all, or without a key
        being rewritten meanwhile), and it leaves a consumer on the bucket for five minutes. A node
        left out here would be left out of stream retention, sync waits, status and verify."""
        async def run() -> dict[str, dict[str, Any]]:
            bucket = self.names.bucket
            await self._bucket(bucket)  # no such bucket: the error every other read gives
            prefix = f"$KV.{bucket}."  # the key-value subjects of a bucket (ADR-8), as nats-py names them
            info = await self.bridge.js.stream_info(f"KV_{bucket}", subjects_filter=f"{prefix}{node_key('>')}")
            out = {}
            for subject in sorted(info.state.subjects or {}):  # deleted keys too: their reads give None
                key = subject[len(prefix):]
                found = await self._get(key)
                if found is not None and isinstance(found.value, dict):
                    out[key[len(node_key("")):]] = found.value
            return out

        return self.bridge.call(run(), what="reading node positions")

    def node(self, name: str) -> dict[str, Any] | None:
        found = self.get(node_key(name))
        return found.value if found is not None and isinstance(found.value, dict) else None


def _dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
