"""The cluster's log as a JetStream stream: publishing committed entries and reading them back.

Stream sequence == LSN. Publishing is idempotent (message id) and fenced (expected last sequence);
reading goes through an ephemeral pull consumer that starts at the reader's position, so a follower
reads exactly what it has not applied and duplicates are dropped by LSN.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass
from typing import Any

from ..errors import LeaseLost, TransportError
from ..store.log import LogEntry
from ..store.source import LogSource
from . import codec
from .bridge import Bridge, translate
from .names import Names

log = logging.getLogger("replproxy.nats")

WRONG_LAST_SEQUENCE = 10071
WRONG_LAST_MSG_ID = 10070
# Bytes kept free in a message for the headers when deciding whether a payload fits inline.
HEADER_ROOM = 4096
PUBLISH_WINDOW = 128  # entries in flight at once


@dataclass(frozen=True)
class StreamState:
    first_seq: int
    last_seq: int
    messages: int
    bytes: int
    replicas: int


class LogStream:
    """The stream of one cluster, for publishing and single reads."""

    def __init__(self, bridge: Bridge, names: Names, cluster_id: str):
        self.bridge = bridge
        self.names = names
        self.cluster_id = cluster_id
        self._objects: Any = None

    # -- the stream itself ---------------------------------------------------------------------

    def ensure(self, replicas: int = 1, first_seq: int = 1) -> StreamState:
        """Create the stream if it does not exist (an existing one is kept as it is)."""
        from nats.js import api
        from nats.js.errors import NotFoundError

        async def run() -> Any:
            try:
                return await self.bridge.js.stream_info(self.names.stream)
            except NotFoundError:
                config = api.StreamConfig(
                    name=self.names.stream, subjects=[self.names.log_subject], num_replicas=replicas,
                    storage=api.StorageType.FILE, retention=api.RetentionPolicy.LIMITS,
                    duplicate_window=120.0, allow_direct=True,
                    first_seq=first_seq if first_seq > 1 else None)
                return await self.bridge.js.add_stream(config)

        return _state(self.bridge.call(run(), what=f"creating stream {self.names.stream}"))

    def state(self) -> StreamState:
        info = self.bridge.call(self.bridge.js.stream_info(self.names.stream),
                                what=f"reading stream {self.names.stream}")
        return _state(info)

    def delete(self) -> None:
        self.bridge.call(self.bridge.js.delete_stream(self.names.stream), what="deleting the stream")

    async def objects(self) -> Any:
        if self._objects is None:
            from nats.js.errors import NotFoundError

            try:
                self._objects = await self.bridge.js.object_store(self.names.objects)
            except NotFoundError:
                self._objects = await self.bridge.js.create_object_store(self.names.objects)
        return self._objects

    # -- publishing ----------------------------------------------------------------------------

    def publish(self, entries: list[LogEntry], timeout: float = 5.0) -> tuple[int | None, BaseException | None]:
        """Publish `entries` (consecutive LSNs) in order; return the last LSN the stream holds as
        ours and the error that stopped the rest, if any. Not raising lets the relay keep what
        went through before a failure."""
        return self.bridge.call(self._publish(entries, timeout), timeout=timeout * 2 + 5, what="publish")

    async def _publish(self, entries: list[LogEntry], timeout: float) -> tuple[int | None, BaseException | None]:
        limit = self.bridge.max_payload - HEADER_ROOM
        reached: int | None = None
        for start in range(0, len(entries), PUBLISH_WINDOW):
            window = entries[start:start + PUBLISH_WINDOW]
            sends = []
            for index, entry in enumerate(window, start):
                # The batch is in flight at once: each entry continues only its own predecessor.
                previous = entries[index - 1] if index > 0 and entries[index - 1].lsn == entry.lsn - 1 else None
                body, name = entry.payload, None
                if len(body) > limit:
                    name = codec.object_name(self.cluster_id, entry)
                    store = await self.objects()
                    await store.put(name, body)
                    body = b""
                sends.append(asyncio.ensure_future(self.bridge.js.publish(
                    self.names.log_subject, body, timeout=timeout, stream=self.names.stream,
                    headers=codec.headers(self.cluster_id, entry, object_name=name, previous=previous))))
            results = await asyncio.gather(*sends, return_exceptions=True)
            for entry, result in zip(window, results, strict=True):
                if isinstance(result, BaseException):
                    error = await self._explain(entry, result)
                    if isinstance(error, _AlreadyThere):
                        reached = entry.lsn  # an earlier try went through: the same entry is there
                        continue
                    return reached, translate(error, f"publishing log entry {entry.lsn}", self.bridge.urls)
                if result.seq != entry.lsn:
                    return reached, TransportError(
                        f"stream {self.names.stream} stored log entry {entry.lsn} at sequence {result.seq}: "
                        "the stream's numbering no longer follows the log")
                reached = entry.lsn
        return reached, None

    async def _explain(self, entry: LogEntry, error: BaseException) -> BaseException:
        """A refused publish: the stream already holds this very entry (an earlier try that
        went through), or another leader's entry is there (we are deposed)."""
        from nats.js.errors import APIError

        if not (isinstance(error, APIError) and error.err_code in (WRONG_LAST_SEQUENCE, WRONG_LAST_MSG_ID)):
            return error
        theirs = await self._msg_id(entry.lsn)
        if theirs == codec.msg_id(self.cluster_id, entry):
            return _AlreadyThere(entry.lsn)
        if theirs is None:
            return TransportError(f"stream {self.names.stream} refused log entry {entry.lsn}: it does not "
                                  f"end at entry {entry.lsn - 1} ({error.description})")
        return LeaseLost(f"log entry {entry.lsn} of epoch {entry.epoch} was refused: the stream already "
                         f"holds another leader's entry {entry.lsn} ({theirs}); this node is deposed")

    async def _msg_id(self, seq: int) -> str | None:
        from nats.js.errors import NotFoundError

        try:
            msg = await self.bridge.js.get_msg(self.names.stream, seq=seq)
        except NotFoundError:
            return None
        return (msg.headers or {}).get(codec.MSG_ID)

    def msg_id(self, seq: int) -> str | None:
        return self.bridge.call(self._msg_id(seq), what=f"reading stream message {seq}")

    # -- reading one entry ---------------------------------------------------------------------

    def get(self, seq: int) -> LogEntry | None:
        return self.bridge.call(self._get(seq), what=f"reading stream message {seq}")

    async def _get(self, seq: int) -> LogEntry | None:
        from nats.js.errors import NotFoundError

        try:
            msg = await self.bridge.js.get_msg(self.names.stream, seq=seq)
        except NotFoundError:
            return None
        return await self._entry(msg.seq, msg.headers, msg.data or b"")

    async def _entry(self, seq: int, hdrs: dict[str, str] | None, body: bytes) -> LogEntry:
        entry, name = codec.decode(seq, hdrs, body)
        if name is not None:
            store = await self.objects()
            result = await store.get(name)
            entry = LogEntry(entry.lsn, entry.epoch, entry.format, bytes(result.data or b""),
                             entry.checksum, entry.committed_at, entry.origin)
        return entry


class _AlreadyThere(Exception):
    """The stream already held the entry (a retry of a publish that went through)."""

    def __init__(self, lsn: int):
        super().__init__(f"entry {lsn} already published")
        self.lsn = lsn


def already_there(error: BaseException | None) -> int | None:
    """The LSN a refused publish had in fact already stored, if that is why it was refused."""
    return error.lsn if isinstance(error, _AlreadyThere) else None


def _state(info: Any) -> StreamState:
    state = info.state
    return StreamState(first_seq=int(state.first_seq or 0), last_seq=int(state.last_seq or 0),
                       messages=int(state.messages or 0), bytes=int(state.bytes or 0),
                       replicas=int(info.config.num_replicas or 1))


class JetStreamSource(LogSource):
    """A follower's view of the stream: entries after its position, in LSN order.

    An ephemeral pull consumer starts at the position the applier asks for; when the applier asks
    for another position (a restart, a rewind) the consumer is replaced. Entries come into a buffer
    that `wait` fills; `read` serves from it.
    """

    IDS_KEPT = 4096
    STALL_CHECK = 2.0  # seconds without a delivery before checking the stream for more

    def __init__(self, stream: LogStream, *, batch: int = 512):
        self.stream = stream
        self.bridge = stream.bridge
        self.batch = batch
        self._sub: Any = None
        self._next: int | None = None  # the sequence the consumer delivers next
        self._buffer: collections.deque[LogEntry] = collections.deque()
        self._pending = 0  # messages the consumer still holds after the last one delivered
        self._ids: collections.OrderedDict[int, tuple[int, int, float]] = collections.OrderedDict()
        self._last_known = 0
        self._quiet_since = time.monotonic()
        self._reset = False  # the consumer delivered out of order: replace it

    # -- LogSource ------------------------------------------------------------------------------

    def last_lsn(self) -> int:
        self._last_known = max(self._last_known, self.stream.state().last_seq)
        return self._last_known

    def read(self, after: int, limit: int) -> list[LogEntry]:
        self._drop_through(after)
        if not self._buffer or self._buffer[0].lsn != after + 1:
            self.fill(after, wait=0.0)
        out: list[LogEntry] = []
        for entry in self._buffer:
            if len(out) >= limit:
                break
            out.append(entry)
        return out

    def commit_time(self, lsn: int) -> float | None:
        known = self._ids.get(lsn)
        if known is not None:
            return known[2]
        entry = self.stream.get(lsn)
        return entry.committed_at if entry else None

    def identity(self, lsn: int) -> tuple[int, int] | None:
        known = self._ids.get(lsn)
        if known is not None:
            return known[0], known[1]
        entry = self.stream.get(lsn)
        return (entry.epoch, entry.checksum) if entry else None

    def close(self) -> None:
        self._drop_consumer()

    # -- filling --------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Entries known to be in the stream past the buffer (from the last delivery)."""
        return self._pending

    def buffered_after(self, after: int) -> bool:
        self._drop_through(after)
        return bool(self._buffer) and self._buffer[0].lsn == after + 1

    def fill(self, after: int, wait: float) -> int:
        """Fetch entries after `after` into the buffer, waiting up to `wait` seconds for the first
        one if none is there; return how many arrived."""
        self._drop_through(after)
        expected = self._buffer[-1].lsn + 1 if self._buffer else after + 1
        if self._buffer and self._buffer[0].lsn != after + 1:
            self._buffer.clear()
            expected = after + 1
        if self._next != expected:
            self._drop_consumer()
            expected = after + 1
        try:
            entries = self.bridge.call(self._fill(expected, wait), timeout=max(wait, 1.0) + 10,
                                       what="reading the log stream")
        except TransportError as exc:
            self._drop_consumer()
            raise TransportError(f"reading the log stream from LSN {expected}: {exc}") from exc
        if self._reset:  # the next fill starts a new consumer at the reader's position
            self._reset = False
            self._drop_consumer()
            return 0
        for entry in entries:
            if self._buffer and entry.lsn != self._buffer[-1].lsn + 1:
                break  # a gap: the applier reports it (entry no longer in the log)
            self._buffer.append(entry)
            self._ids[entry.lsn] = (entry.epoch, entry.checksum, entry.committed_at)
            self._last_known = max(self._last_known, entry.lsn + self._pending)
        while len(self._ids) > self.IDS_KEPT:
            self._ids.popitem(last=False)
        now = time.monotonic()
        if entries or self._sub is None:
            self._quiet_since = now
        elif now - self._quiet_since >= self.STALL_CHECK:
            # Nothing for a while: either nothing was written, or the consumer died with the
            # server that held it (ephemeral consumers are not replicated): ask the stream.
            self._quiet_since = now
            if self.stream.state().last_seq >= expected:
                log.warning("the consumer at LSN %d delivers nothing while the stream holds more: recreating it",
                            expected)
                self._drop_consumer()
        return len(entries)

    async def _fill(self, start: int, wait: float) -> list[LogEntry]:
        from nats.js import api

        fresh = self._sub is None
        if fresh:
            config = api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start,
                ack_policy=api.AckPolicy.NONE, inactive_threshold=60.0, mem_storage=True, num_replicas=1,
                max_waiting=4)
            self._sub = await self.bridge.js.pull_subscribe(self.stream.names.log_subject,
                                                            stream=self.stream.names.stream, config=config)
            self._next = start
        try:
            if self._pending > 0:
                msgs = await self._sub.fetch(self.batch, timeout=2.0)
            else:
                msgs = await self._sub.fetch(1, timeout=max(wait, 0.02))
                if msgs and self._meta_pending(msgs[-1]) > 0:
                    msgs += await self._more()
        except TimeoutError:
            return []
        out = []
        for msg in msgs:
            seq = msg.metadata.sequence.stream
            expected = self._next if self._next is not None else start
            if seq != expected and not (fresh and not out and seq > expected):
                # Not the continuation of what this consumer delivered: it was recreated from its
                # stored config after its server restarted (so it starts over) or lost messages.
                # Start a new one at our position. (A fresh consumer's first message past its
                # start is a real gap: the stream no longer holds those entries.)
                log.warning("the consumer delivered LSN %d where %d was next: recreating it", seq, expected)
                self._reset = True
                break
            self._pending = int(msg.metadata.num_pending or 0)
            out.append(await self.stream._entry(seq, msg.headers, msg.data or b""))
            self._next = seq + 1
        return out

    async def _more(self) -> list[Any]:
        try:
            return await self._sub.fetch(self.batch - 1, timeout=2.0)
        except TimeoutError:
            return []

    @staticmethod
    def _meta_pending(msg: Any) -> int:
        return int(msg.metadata.num_pending or 0)

    def _drop_through(self, after: int) -> None:
        while self._buffer and self._buffer[0].lsn <= after:
            self._buffer.popleft()

    def _drop_consumer(self) -> None:
        sub, self._sub, self._next, self._pending = self._sub, None, None, 0
        self._buffer.clear()
        if sub is not None:
            try:
                self.bridge.call(sub.unsubscribe(), timeout=2.0, what="closing a consumer")
            except Exception:  # the consumer expires by itself (inactive_threshold)
                pass
