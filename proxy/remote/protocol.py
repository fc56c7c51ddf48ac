"""What a remote client and a node's `serve` say to each other over NATS request-reply.

Every request is a JSON object sent to `replproxy.<cluster>.sql.<node>` with an `op`:

| op | served by | does |
| --- | --- | --- |
| read | any node | one read-only statement on the node's own file once it has applied `min_lsn` |
| open | the leader | a session: a driver connection on the leader, pinned to its process |
| execute / script | the leader | a statement (or `many` parameter sets, or a script) in the session |
| fetch | where the rows are | the next chunk of a result too large for one message |
| commit / rollback / close / interrupt | the leader | as the DB-API methods |

Replies carry rows in chunks below the server's message limit, positions (`w` last write, `r`
last read, `e` epoch) and errors as `{"fail": {"class", "message"}}` with the DB-API class and
SQLite's own message. Values: JSON, except bytes as `{"b": base64}` (SQLite values are never maps).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .. import errors
from ..errors import InterfaceError, ProgrammingError

SCHEMES = ("nats", "tls", "ws", "wss")
READ_WAIT_DEFAULT = 0.5
CHUNK_ROWS = 256  # rows encoded at a time while filling a chunk
ENVELOPE = 4096  # bytes of a reply kept for everything but the rows


def is_url(target: object) -> bool:
    return isinstance(target, str) and target.split("://", 1)[0].lower() in SCHEMES and "://" in target


def parse_url(url: str) -> tuple[list[str], str, str | None]:
    """`nats://host:4222[,host2:4222]/CLUSTER[?creds=FILE]`: the server URLs, the cluster, creds."""
    scheme, _, rest = url.partition("://")
    hosts, slash, tail = rest.partition("/")
    cluster, _, query = tail.partition("?")
    cluster = unquote(cluster).strip("/")
    if not hosts or not slash or not cluster:
        raise InterfaceError(f"not a replproxy cluster URL: {url!r} (expected {scheme}://HOST:PORT[,HOST:PORT]/"
                             "CLUSTER, for example nats://127.0.0.1:4222/shop)")
    servers = [f"{scheme}://{h.strip()}" for h in hosts.split(",") if h.strip()]
    options = parse_qs(query)
    unknown = set(options) - {"creds"}
    if unknown:
        raise InterfaceError(f"unknown option(s) in {url!r}: {', '.join(sorted(unknown))} (known: creds)")
    creds = options.get("creds", [None])[0]
    for server in servers:
        if not urlsplit(server).hostname:
            raise InterfaceError(f"no host in {server!r} (from {url!r})")
    return servers, cluster, creds


# -- values -------------------------------------------------------------------------------------

def encode_value(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"b": base64.b64encode(bytes(value)).decode("ascii")}
    return value


def decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        return base64.b64decode(value["b"])
    return value


def encode_params(params: Any) -> Any:
    """Parameters as sent: a list, or `{"n": {name: value}}` for named ones."""
    if params is None:
        return []
    if isinstance(params, dict):
        return {"n": {str(k): encode_value(v) for k, v in params.items()}}
    if isinstance(params, str | bytes):
        raise ProgrammingError("parameters are of unsupported type (a string is not a sequence of values)")
    try:
        return [encode_value(v) for v in params]
    except TypeError:
        raise ProgrammingError(f"parameters are of unsupported type {type(params).__name__}") from None


def decode_params(params: Any) -> Any:
    if isinstance(params, dict):
        return {k: decode_value(v) for k, v in params["n"].items()}
    return tuple(decode_value(v) for v in params or ())


def decode_rows(rows: list[list[Any]]) -> list[tuple[Any, ...]]:
    return [tuple(decode_value(v) for v in row) for row in rows]


def take_chunk(fetch: Callable[[int], Sequence[Sequence[Any]]], budget: int) -> tuple[list[list[Any]], bool]:
    """Rows from `fetch(n)` until their JSON reaches about `budget` bytes; (rows, exhausted).
    Batches shrink as rows grow, so a chunk overshoots by at most about one row."""
    out: list[list[Any]] = []
    size, count = 0, CHUNK_ROWS
    while size < budget:
        batch = fetch(count)
        encoded = [[encode_value(v) for v in row] for row in batch]
        if encoded:
            size += len(json.dumps(encoded))
            out.extend(encoded)
        if len(batch) < count:
            return out, True
        per_row = max(1, size // len(out))
        count = max(1, min(CHUNK_ROWS, (budget - size) // per_row))
    return out, False


def chunk_budget(max_payload: int) -> int:
    """Bytes of rows per reply: a quarter of the message limit (one batch may overshoot)."""
    return max(64 * 1024, max_payload // 4)


# -- errors -------------------------------------------------------------------------------------

def fail(exc: BaseException) -> dict[str, Any]:
    cls = type(exc)
    while cls.__module__ != errors.__name__ and cls is not BaseException:
        cls = cls.__base__  # a subclass of ours from elsewhere: its nearest replproxy class
    name = cls.__name__ if cls.__module__ == errors.__name__ else "OperationalError"
    extra = {}
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        extra["code"] = code
        extra["code_name"] = getattr(exc, "sqlite_errorname", None)
    return {"fail": {"class": name, "message": str(exc) or type(exc).__name__, **extra}}


def raise_failure(reply: dict[str, Any], where: str) -> None:
    """Raise the error a reply carries, as its DB-API class with the server's message."""
    failure = reply.get("fail")
    if not failure:
        return
    cls = getattr(errors, str(failure.get("class")), None)
    if not (isinstance(cls, type) and issubclass(cls, errors.Error)):
        cls = errors.OperationalError
    message = str(failure.get("message"))
    try:
        exc = cls(message)
    except TypeError:  # a class with other required arguments
        exc = errors.OperationalError(message)
    if "code" in failure:  # as Python's sqlite3 gives them
        exc.sqlite_errorcode = failure["code"]  # type: ignore[attr-defined]
        exc.sqlite_errorname = failure.get("code_name")  # type: ignore[attr-defined]
    exc.node = where  # type: ignore[attr-defined]
    raise exc
