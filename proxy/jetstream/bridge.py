"""A NATS connection on its own asyncio thread, called from synchronous code.

replproxy's replication code is synchronous (threads, SQLite); nats-py is asyncio only. A `Bridge`
runs one event loop in a daemon thread and `call` submits a coroutine to it and waits for the result,
translating NATS failures into replproxy's errors with the server's own words.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

from ..errors import TransportError

log = logging.getLogger("replproxy.nats")

T = TypeVar("T")

DEFAULT_TIMEOUT = 5.0


def split_urls(urls: str | Sequence[str]) -> list[str]:
    """`nats://a:4222,nats://b:4222` or a list: the server URLs, each with a scheme."""
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    out = []
    for item in (u.strip() for u in items):
        if item:
            out.append(item if "://" in item else f"nats://{item}")
    if not out:
        raise TransportError("no NATS server URL given (for example --nats nats://127.0.0.1:4222)")
    return out


class NoResponders(TransportError):
    """Nobody listens on the subject: the request was not delivered (safe to send again)."""


class NoReply(TransportError):
    """The request was sent and no answer came in time: whether it was carried out is unknown."""


class PeerGone(NoReply):
    """The request was sent, then the process it went to stopped listening before answering."""


def _is_refusal(exc: BaseException | None) -> bool:
    """The server refused the credentials (while connecting nats-py reports the server's -ERR
    text as a plain error, after it as AuthorizationError)."""
    from nats.errors import AuthorizationError

    return isinstance(exc, AuthorizationError) or "authorization violation" in str(exc).lower()


class _Refused(Exception):
    """The server refused the credentials while connecting."""


class Bridge:
    """One NATS connection (with JetStream) usable from any thread."""

    def __init__(self, urls: str | Sequence[str], *, creds: str | None = None, name: str = "replproxy",
                 timeout: float = DEFAULT_TIMEOUT):
        import nats  # lazily: the embedded default never pays for it

        self.urls = split_urls(urls)
        self.timeout = timeout
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="replproxy-nats", daemon=True)
        self._thread.start()
        self._closed = False
        self._last_error: BaseException | None = None  # the last one the client reported
        self._tasks: set[asyncio.Task[Any]] = set()  # requests being answered (kept from the GC)

        async def connect() -> Any:
            refused = asyncio.Event()

            async def quiet(exc: Exception) -> None:
                # A refusal says more than the reset that follows it (the server closes the
                # socket after -ERR; on a busy machine the client may see the reset first).
                if _is_refusal(exc):
                    self._last_error = exc
                    refused.set()
                elif not _is_refusal(self._last_error):
                    self._last_error = exc
                log.debug("NATS: %s", exc)

            options: dict[str, Any] = dict(
                servers=self.urls, name=name, connect_timeout=min(timeout, 2.0), allow_reconnect=True,
                max_reconnect_attempts=-1, reconnect_time_wait=0.25, error_cb=quiet,
                disconnected_cb=None, ping_interval=5, max_outstanding_pings=3)
            if creds:
                options["user_credentials"] = creds
            # Retrying does not change credentials: a refusal ends the wait at once.
            connecting = asyncio.ensure_future(nats.connect(**options))
            waiting = asyncio.ensure_future(refused.wait())
            await asyncio.wait({connecting, waiting}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            if connecting.done():
                return connecting.result()
            connecting.cancel()
            raise _Refused(str(self._last_error))

        try:
            self.nc = self.call(connect(), timeout=timeout + 1, what="connecting")
        except _Refused as exc:
            self._stop_loop()
            raise TransportError(f"the NATS server refused the connection's credentials (servers "
                                 f"{', '.join(self.urls)}): {exc}") from None
        except TransportError as exc:
            # The client retries every server until our wait ends: say so, with its last error.
            self._stop_loop()
            raise TransportError(f"cannot reach a NATS server (servers {', '.join(self.urls)}) within "
                                 f"{timeout + 1:g}s: {self._last_error or 'no answer'}") from exc
        except BaseException:
            self._stop_loop()
            raise
        self.js = self.nc.jetstream(timeout=timeout)

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, awaitable: Awaitable[T], *, timeout: float | None = None, what: str = "") -> T:
        """Run `awaitable` on the bridge's loop and return its result (or raise its error, NATS
        errors as TransportError)."""
        future = asyncio.run_coroutine_threadsafe(_wrap(awaitable), self.loop)
        wait = self.timeout + 1 if timeout is None else timeout
        try:
            return future.result(wait)
        except TimeoutError as exc:
            if future.done():  # the operation's own timeout (a NATS request), not this wait
                raise translate(exc, what, self.urls) from exc
            future.cancel()
            raise TransportError(f"NATS {what or 'operation'} timed out after {wait:g}s "
                                 f"(servers {', '.join(self.urls)})") from exc
        except Exception as exc:
            raise translate(exc, what, self.urls) from exc

    def submit(self, factory: Callable[[], Awaitable[Any]]) -> None:
        """Run a coroutine on the loop without waiting for it (subscriptions' handlers)."""
        asyncio.run_coroutine_threadsafe(_wrap(factory()), self.loop)

    def serve(self, subject: str, handler: Callable[[dict[str, Any]], dict[str, Any]], *,
              executor: Executor | None = None) -> Any:
        """Answer JSON requests on `subject` with `handler` (run in a worker thread: it may block
        on SQLite). A handler's exception becomes `{"error": message}`. With an `executor`, requests
        are handled concurrently on its threads (one slow request does not hold the others);
        without one, one at a time. Returns the subscription."""
        async def answer(msg: Any) -> None:
            try:
                request = json.loads(msg.data or b"{}")
                reply = await self.loop.run_in_executor(executor, handler, request)
            except Exception as exc:  # the requester gets the reason, the node goes on serving
                reply = {"error": str(exc) or type(exc).__name__}
            try:
                await msg.respond(json.dumps(reply).encode())
            except Exception as exc:  # the requester gave up (timeout) or the connection is gone
                log.debug("cannot answer on %s: %s", subject, exc)

        async def on_request(msg: Any) -> None:
            if executor is None:
                await answer(msg)
            else:
                task = self.loop.create_task(answer(msg))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

        return self.call(self.nc.subscribe(subject, cb=on_request), what=f"subscribing to {subject}")

    def unsubscribe(self, subscription: Any) -> None:
        try:
            self.call(subscription.unsubscribe(), timeout=2.0, what="unsubscribing")
        except Exception as exc:  # the connection is already gone
            log.debug("unsubscribing: %s", exc)

    def request(self, subject: str, payload: dict[str, Any], timeout: float, *,
                probe: dict[str, Any] | None = None, probe_every: float = 1.0) -> dict[str, Any]:
        """Send a JSON request and return the JSON reply; an `{"error"}` reply raises TransportError.
        With `probe`, while no reply has come, `probe` is sent to the same subject every
        `probe_every` seconds: once nobody listens there any more, the wait ends with PeerGone."""
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout

        async def run() -> Any:
            try:
                asked = asyncio.ensure_future(self.nc.request(subject, json.dumps(payload).encode(), timeout=timeout))
                while probe is not None and not asked.done():
                    await asyncio.wait({asked}, timeout=probe_every)
                    if asked.done():
                        break
                    try:
                        await self.nc.request(subject, json.dumps(probe).encode(), timeout=probe_every)
                    except NoRespondersError:
                        asked.cancel()
                        raise PeerGone(f"nobody answers on {subject} any more: the process serving it is "
                                       "gone") from None
                    except (TimeoutError, NatsTimeout):
                        pass  # busy or paused: wait on for the answer
                return await asked
            except NoRespondersError:
                raise NoResponders(f"nobody answers on {subject}: is `replproxy serve` running for that "
                                   "node?") from None
            except (TimeoutError, NatsTimeout):
                raise NoReply(f"no answer on {subject} within {timeout:g}s") from None

        msg = self.call(run(), timeout=timeout + 2, what=f"request on {subject}")
        reply = json.loads(msg.data or b"{}")
        if isinstance(reply, dict) and reply.get("error"):
            raise TransportError(str(reply["error"]))
        return reply

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    @property
    def max_payload(self) -> int:
        return int(self.nc.max_payload)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.call(self.nc.close(), timeout=2.0, what="close")
        except Exception:  # closing a connection that is already gone
            pass
        self._stop_loop()

    def _stop_loop(self) -> None:
        async def finish_tasks() -> None:  # a cancelled call (a connect that timed out) ends first
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(finish_tasks(), self.loop).result(2.0)
        except Exception:  # a task that does not end: the loop stops anyway
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=2.0)

    def __enter__(self) -> Bridge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _wrap(awaitable: Awaitable[T]) -> T:
    return await awaitable


def translate(exc: BaseException, what: str, urls: Sequence[str]) -> BaseException:
    """NATS errors become TransportError with the server's description; others pass."""
    from nats import errors as nats_errors
    from nats.js import errors as js_errors

    if isinstance(exc, TransportError):
        return exc
    where = f" (servers {', '.join(urls)})"
    label = f"NATS {what}: " if what else "NATS: "
    # Before OSError: TimeoutError is one (and nats' TimeoutError is an asyncio.TimeoutError).
    if isinstance(exc, nats_errors.TimeoutError | asyncio.TimeoutError):
        return TransportError(f"{label}timed out{where}")
    if isinstance(exc, nats_errors.NoServersError | OSError | ConnectionError):
        return TransportError(f"cannot reach a NATS server{where}: {exc or type(exc).__name__}")
    if isinstance(exc, js_errors.ServiceUnavailableError):
        return TransportError(f"{label}JetStream is not available{where}: is the server started "
                              f"with JetStream (-js), and does the cluster have a quorum? ({exc})")
    if isinstance(exc, js_errors.Error | nats_errors.Error):
        return TransportError(f"{label}{exc.description if hasattr(exc, 'description') and exc.description else exc}")
    return exc
