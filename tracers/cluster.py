"""Where independent tasks run: on a Dask cluster (the `cluster` extra: a local one on this
machine's cores, or an existing one by its scheduler's address), or, without Dask, on a local
process pool.

Both engines take picklable tasks (a module-level function and its arguments) and yield each
task's index with its result as tasks finish, in any order. A task whose worker process died under
it (a segfault in native code) yields LOST instead of a result: the caller decides what to do
with it (run_alone() runs it again in a process of its own, whose exit status names the signal).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

from emulator import FtlabError

LOST = object()  # a task's outcome when its worker process died while running it
Task = tuple[Any, ...]  # the task function's arguments
# spawn, not fork: a fresh interpreter per worker, whatever threads (a progress bar's) the parent runs
SPAWN = multiprocessing.get_context("spawn")


def _workers(n: int) -> str:
    return f"{n} worker{'s' * (n != 1)}"


class Engine(Protocol):
    name: str

    def run(self, fn: Callable[..., Any], tasks: Sequence[Task]) -> Iterator[tuple[int, Any]]: ...

    def close(self) -> None: ...


class ProcessPool:
    """concurrent.futures' process pool. A worker that dies breaks the whole pool, failing every
    task it held, not only its own: those are all LOST, and a new pool takes the rest. At most 2
    tasks a worker are in flight, so few are LOST with the one that crashed."""

    def __init__(self, workers: int):
        self.workers = workers
        self.name = f"process pool ({_workers(workers)})"

    def run(self, fn, tasks):
        todo = list(range(len(tasks)))[::-1]  # popped from the end: in order
        while todo:
            with ProcessPoolExecutor(self.workers, mp_context=SPAWN) as pool:
                running: dict[Any, int] = {}
                broken = False
                while (todo and not broken) or running:
                    while todo and not broken and len(running) < 2 * self.workers:
                        index = todo.pop()
                        running[pool.submit(fn, *tasks[index])] = index
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in sorted(done, key=running.__getitem__):
                        index = running.pop(future)
                        if isinstance(future.exception(), BrokenProcessPool):  # every task the pool held
                            broken = True
                            yield index, LOST
                        else:
                            yield index, future.result()

    def close(self):
        pass


class DaskCluster:
    """Dask's distributed scheduler: a LocalCluster of single-threaded worker processes (the lab is
    CPU-bound Python), or the cluster at `address`, whose workers must see the tasks' files at the
    same paths. A task whose worker died on every try (distributed.scheduler.allowed-failures) is
    LOST (KilledWorker)."""

    def __init__(self, workers: int, address: str | None = None):
        import distributed  # the optional `cluster` extra

        self.distributed = distributed
        try:
            if address is None:
                cluster = distributed.LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=":0",  # a free port: several clusters on one machine
                    silence_logs=logging.ERROR,  # a restarted worker is reported per task, not logged
                )
                self.client = distributed.Client(cluster)
                self.name = f"dask local cluster ({_workers(workers)})"
            else:
                self.client = distributed.Client(address, timeout=10)
                count = len(self.client.scheduler_info(n_workers=-1)["workers"])
                self.name = f"dask cluster at {address} ({_workers(count)})"
        except (OSError, TimeoutError) as err:
            raise FtlabError(f"dask scheduler {address or '(local)'}: {err}") from None

    def run(self, fn, tasks):
        futures = {self.client.submit(fn, *task, pure=False): index for index, task in enumerate(tasks)}
        for future in self.distributed.as_completed(futures):
            index = futures.pop(future)
            if future.status == "error" and isinstance(future.exception(), self.distributed.KilledWorker):
                yield index, LOST
            else:
                yield index, future.result()
            future.release()

    def close(self):
        cluster = self.client.cluster
        self.client.close()
        if cluster is not None:
            cluster.close()


def dask_available() -> bool:
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


def engine(workers: int | None = None, scheduler: str | None = None) -> Engine:
    """Dask when it is installed (a local cluster, or `scheduler`'s), else a process pool;
    `workers` defaults to this machine's cores."""
    workers = workers or os.cpu_count() or 1
    if dask_available():
        return DaskCluster(workers, scheduler)
    if scheduler is not None:
        raise FtlabError(f"--scheduler {scheduler}: Dask is not installed (pip install 'ftlab[cluster]')")
    return ProcessPool(workers)


def _child(conn, fn, task):
    conn.send(fn(*task))
    conn.close()


def run_alone(fn: Callable[..., Any], task: Task) -> tuple[Any, str | None]:
    """Run one task in a process of its own: (its result, None), or (None, how the process died)."""
    receive, send = SPAWN.Pipe(duplex=False)
    proc = SPAWN.Process(target=_child, args=(send, fn, task), daemon=True)
    proc.start()
    send.close()
    try:
        result = receive.recv()
    except EOFError:  # died before sending
        result = None
    proc.join()
    if proc.exitcode == 0:
        return result, None
    code = proc.exitcode or 0
    died = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
    return None, f"worker process {died}"
