"""Where a decomposed problem's parts live and run: threads of this process, or Dask actors.

A pool holds one model per part for as long as the decomposition is kept, and `each` calls
every model at once, returning the results in the parts' order. `ThreadParts` keeps the models
here and calls them on a few threads (HiGHS releases the interpreter while it runs).
`DaskParts` builds each model as a Dask actor on a worker of a `dask.distributed` cluster: the
model stays on that worker across calls, and only a call's arguments and result cross the
network. Dask is imported only when a `DaskParts` is made.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from vpp.errors import VPPError

if TYPE_CHECKING:
    from distributed import Client

M = TypeVar("M")
T = TypeVar("T")
M_co = TypeVar("M_co", covariant=True)

#: Seconds to wait for a Dask scheduler to answer when connecting to it.
CONNECT_TIMEOUT_S = 10.0


class FanOutError(VPPError):
    """The Dask cluster that solves the parts cannot be reached or lost a part's model;
    `scheduler` names the cluster."""

    def __init__(self, scheduler: str, message: str) -> None:
        self.scheduler = scheduler
        super().__init__(f"dispatch scheduler {scheduler}: {message}")


class Parts(Protocol[M_co]):
    """One model per part, kept where it was made; `each` calls them all at once."""

    def each(self, call: Callable[[int, M_co], T]) -> list[T]:
        """`call(k, model)` for every part k; the results in the parts' order."""
        ...

    def close(self) -> None:
        """Let the models go."""
        ...


class ThreadParts(Generic[M]):
    """The models in this process, called on up to `workers` threads at once."""

    def __init__(self, models: Sequence[M], workers: int) -> None:
        self.models = list(models)
        self.workers = workers

    def each(self, call: Callable[[int, M], T]) -> list[T]:
        if self.workers <= 1 or len(self.models) == 1:
            return [call(k, model) for k, model in enumerate(self.models)]
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(call, range(len(self.models)), self.models))

    def close(self) -> None:
        self.models = []


class DaskParts(Generic[M]):
    """The models as Dask actors, spread in turn over the cluster's workers.

    `make(*args)` runs on the worker for each entry of `args`; each call of a model runs on
    its worker's actor thread, so a worker solves one part at a time and the cluster as many
    as it has workers. An actor lives as long as this pool holds its future.
    """

    def __init__(
        self, client: Client, make: Callable[..., M], args: Sequence[tuple[object, ...]]
    ) -> None:
        self.client = client
        self.scheduler = str(client.scheduler.address) if client.scheduler else "?"
        workers = sorted(client.scheduler_info()["workers"])
        if not workers:
            raise FanOutError(self.scheduler, "no workers to place the parts on")
        self._futures = [
            client.submit(make, *part_args, actor=True, workers=[workers[k % len(workers)]])
            for k, part_args in enumerate(args)
        ]
        self._actors: list[Any] = [future.result() for future in self._futures]

    def each(self, call: Callable[[int, M], T]) -> list[T]:
        # On an actor, a method call returns a future of its result: start all, then wait.
        pending: list[Any] = [call(k, actor) for k, actor in enumerate(self._actors)]
        try:
            return [future.result() for future in pending]
        except (OSError, KeyError) as err:  # a worker went away with its models
            raise FanOutError(self.scheduler, f"lost a part's model ({err!r})") from err

    def close(self) -> None:
        # Cancelling forgets the actors on the cluster at once; a release would wait for the
        # futures their proxies hold to be collected.
        if self._futures:
            self.client.cancel(self._futures, force=True)  # type: ignore[no-untyped-call]
        self._actors = []
        self._futures = []


_clients: dict[str, Client] = {}
_clients_lock = threading.Lock()


def dask_client(scheduler: str) -> Client:
    """A client of the Dask scheduler at `scheduler` (e.g. "tcp://10.0.0.5:8786"), made on
    first use and kept for the process's later solves."""
    from distributed import Client  # noqa: PLC0415 - Dask only when asked for

    with _clients_lock:
        client = _clients.get(scheduler)
        if client is not None and client.status == "running":
            return client
        try:
            client = Client(  # type: ignore[no-untyped-call]
                scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False
            )
        except (OSError, TimeoutError, ValueError) as err:
            raise FanOutError(scheduler, f"cannot connect ({err})") from err
        _clients[scheduler] = client
        return client


def close_dask_clients() -> None:
    """Close the clients `dask_client` kept (at shutdown)."""
    with _clients_lock:
        for client in _clients.values():
            client.close()  # type: ignore[no-untyped-call]
        _clients.clear()
