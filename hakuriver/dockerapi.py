"""The one Docker seam: the SDK, a client, and the threads its calls run in.

Three places drive the Docker engine: the Host's environments
(`host/environments.py`), the runner's environment sync
(`runner/environments.py`) and the Docker executor
(`runner/executors/docker/`). They all reach it through this module, which
keeps the rules in one place:

- The SDK is imported on first use (`sdk()`), so importing HakuRiver, the
  executor registry or a CLI never needs it.
- A client is made on first use too, inside a worker thread
  (`Engine.api()`): making one asks the daemon for its API version, which
  blocks.
- Every SDK call blocks, so it runs in a dedicated thread pool
  (`Engine.call`, `run_in`), never on the event loop and never in asyncio's
  default pool, where a slow daemon would starve unrelated work.
- Docker's reason for a failure is `docker_explanation(exc)`: the daemon's
  own words, without the request URL.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import gc
import threading
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import ExecutorError, HakuRiverError

T = TypeVar("T")


def sdk() -> Any:
    """The `docker` package, imported now if it was not yet."""
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - the SDK is a hard dependency
        raise ExecutorError(f"HakuRiver needs the Docker SDK for Python ({exc})") from exc
    return docker


def docker_explanation(exc: BaseException) -> str:
    """Docker's own explanation of an SDK error, without the request URL noise."""
    explanation = getattr(exc, "explanation", None)
    if explanation:
        return explanation.decode(errors="replace") if isinstance(explanation, bytes) else str(explanation)
    return str(exc) or type(exc).__name__


def thread_pool(threads: int, name: str) -> concurrent.futures.ThreadPoolExecutor:
    """A pool of its own for blocking Docker work; its threads are named `name_N`."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)


async def run_in(pool: concurrent.futures.Executor, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` in one of `pool`'s threads, awaited from the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(pool, functools.partial(fn, *args, **kwargs))


def collect_leaked_socket() -> None:
    """The SDK does not close the socket of a failed unix-socket connect
    (its connection class leaves it to the garbage collector). Collect it
    now, quietly, so its ResourceWarning does not surface later inside some
    unrelated code."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


class Engine:
    """A Docker client made on first use, and the dedicated threads that call it.

    `client`: a `docker.DockerClient` to use, which `close()` leaves open.
    Otherwise one is made from `base_url`, or from the environment
    (DOCKER_HOST, ...), with `client_options` (`timeout`, `max_pool_size`);
    `unreachable(why)` is the error raised when that fails, in the caller's
    vocabulary (an API error on the Host, an ExecutorError on a runner).
    """

    def __init__(
        self,
        *,
        threads: int,
        name: str,
        unreachable: Callable[[str], HakuRiverError],
        client: Any = None,
        base_url: str | None = None,
        **client_options: Any,
    ):
        self._client = client
        self._owns_client = client is None
        self._base_url = base_url
        self._options = client_options
        self._unreachable = unreachable
        self._lock = threading.Lock()
        self.pool = thread_pool(threads, name)

    def api(self) -> Any:
        """The low-level `APIClient`. Blocking: call it in a worker thread."""
        with self._lock:
            if self._client is None:
                docker = sdk()
                why = None
                try:
                    if self._base_url:
                        self._client = docker.DockerClient(base_url=self._base_url, **self._options)
                    else:
                        self._client = docker.from_env(**self._options)
                except docker.errors.DockerException as exc:
                    why = docker_explanation(exc)
                if why is not None:
                    # Outside the except block: the traceback (which holds the
                    # socket) is gone, so the collector can close it.
                    collect_leaked_socket()
                    raise self._unreachable(why)
            client = self._client
            assert client is not None
            return client.api

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` in this engine's threads."""
        return await run_in(self.pool, fn, *args, **kwargs)

    async def close(self) -> None:
        """Drop the calls still queued and close the client if it was made here.
        Calls already running finish in their threads."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await asyncio.to_thread(client.close)
