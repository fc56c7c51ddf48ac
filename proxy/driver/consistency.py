"""Read consistency: what a session has seen, and which positions a read may be served from.

Positions are the currency: a session remembers the LSN of its last write and the highest LSN it
has read; a follower qualifies for a read when its applied LSN covers what the level needs.

| level | a follower qualifies when its applied LSN is at least |
| --- | --- |
| strong | (never: the leader serves) |
| session | max(last write, last read): read-your-writes + monotonic reads |
| read-your-writes | the session's last write (and the user's, with `user=`) |
| monotonic | the highest LSN the session has read |
| eventual | 0 (any follower, possibly stale) |

Every level reads one follower's committed state, and each log entry is applied in one follower
transaction, so every read sees a prefix of the log (consistent prefix reads).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from ..errors import ProgrammingError

LEVELS = ("strong", "session", "read-your-writes", "monotonic", "eventual")
POLICIES = ("wait", "leader", "error")
DEFAULT_LEVEL = "session"
DEFAULT_POLICY = "wait"
DEFAULT_WAIT = 0.5  # seconds a read waits for a follower to catch up under the "wait" policy

TOKEN_PREFIX = "rp1."


def check_level(level: str) -> str:
    if level not in LEVELS:
        raise ProgrammingError(f"unknown consistency level {level!r}; choose one of {', '.join(LEVELS)}")
    return level


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ProgrammingError(f"unknown policy {policy!r} for when no follower qualifies; "
                               f"choose one of {', '.join(POLICIES)}")
    return policy


@dataclass
class Session:
    """What one session has written and read, as log positions."""

    cluster_id: str
    last_write_lsn: int = 0
    last_read_lsn: int = 0
    # The epoch the last write was committed in (0: unknown). After a failover, a write past the
    # new epoch's base LSN was lost: remote sessions report it (docs/remote.md).
    write_epoch: int = 0

    def wrote(self, lsn: int, epoch: int = 0) -> None:
        if lsn > self.last_write_lsn:
            self.last_write_lsn = lsn
            self.write_epoch = max(self.write_epoch, epoch)

    def read(self, lsn: int) -> None:
        self.last_read_lsn = max(self.last_read_lsn, lsn)

    def needed(self, level: str, user_write_lsn: int = 0) -> int:
        """The lowest applied LSN a follower must have to serve a read at `level`."""
        writes = max(self.last_write_lsn, user_write_lsn)
        if level == "session":
            return max(writes, self.last_read_lsn)
        if level == "read-your-writes":
            return writes
        if level == "monotonic":
            return self.last_read_lsn
        return 0

    def token(self) -> str:
        """An opaque string that lets another connection, process or device continue this session."""
        fields = {"c": self.cluster_id, "w": self.last_write_lsn, "r": self.last_read_lsn}
        if self.write_epoch:
            fields["e"] = self.write_epoch
        body = json.dumps(fields, separators=(",", ":")).encode()
        return TOKEN_PREFIX + base64.urlsafe_b64encode(body).decode().rstrip("=")

    def merge_token(self, token: str) -> None:
        """Continue the session a token describes (positions only move forward)."""
        data = parse_token(token)
        if data["c"] != self.cluster_id:
            raise ProgrammingError("this session token belongs to another cluster")
        self.wrote(int(data["w"]), int(data.get("e") or 0))
        self.read(int(data["r"]))


def parse_token(token: str) -> dict:
    if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX):
        raise ProgrammingError("not a replproxy session token")
    body = token[len(TOKEN_PREFIX):]
    try:
        data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        if not isinstance(data, dict) or not {"c", "w", "r"} <= set(data):
            raise ValueError("fields missing")
        int(data["w"]), int(data["r"]), int(data.get("e") or 0)
    except (ValueError, binascii.Error, TypeError) as exc:
        raise ProgrammingError(f"damaged session token: {exc}") from None
    return data
