"""Workers that run a pipeline's independent decoder calls side by side (RuntimeConfig.decoder_concurrency).

    workers = DecoderWorkers(run)      # run(decoder name, calls, torch threads) -> (results, ms)
    future = workers.submit("detector", calls, config.runtime, n_decoders=3, in_flight=2)
    workers.close()

"thread": one shared thread pool. "process": one long-lived forked process per decoder, which keeps the decoders
as they were at the fork (like a warm Ray replica); calls and results cross the pipe as plain picklable data.
Each worker holds what it serves; nothing is kept at module level.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any

import torch

from router.config import RuntimeConfig
from router.stages import DecoderCall, DecoderResult

Timed = tuple[list[DecoderResult], float]  # a decoder's results and its wall time in ms
Runner = Callable[[str, Sequence[DecoderCall], int], Timed]  # (decoder name, calls, torch threads; 0: as is)


class ForkedWorker:
    """One forked process serving `run` for one decoder; its calls queue in order (one at a time)."""

    def __init__(self, run: Runner, threads: int) -> None:
        ctx = multiprocessing.get_context("fork")  # fork: the child inherits the built decoders, nothing is pickled
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(self._conn, child, run, threads), daemon=True)
        self._process.start()
        child.close()
        self._sender = ThreadPoolExecutor(1, thread_name_prefix="decoder-process")

    def submit(self, name: str, calls: Sequence[DecoderCall]) -> Future[Timed]:
        return self._sender.submit(self._call, name, list(calls))

    def _call(self, name: str, calls: list[DecoderCall]) -> Timed:
        self._conn.send((name, calls))
        ok, value = self._conn.recv()  # EOFError when the worker process died
        if not ok:
            raise value
        return value

    def shutdown(self) -> None:
        self._sender.shutdown(wait=True, cancel_futures=True)  # wait: no call outlives the worker
        try:
            self._conn.send(None)
        except OSError:  # the process is gone already
            pass
        self._process.join()
        self._conn.close()


def _serve(parent: Connection, conn: Connection, run: Runner, threads: int) -> None:
    """The forked worker's loop: (name, calls) in, (ok, results or exception) out, until None arrives."""
    parent.close()  # the parent's end: so the loop sees EOF if the parent goes away
    torch.set_num_threads(threads)
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        try:
            reply: tuple[bool, Any] = (True, run(job[0], job[1], 0))
        except Exception as err:  # re-raised in the parent, as a process pool would
            reply = (False, err)
        conn.send(reply)


class DecoderWorkers:
    """A pipeline's decoder workers, created on first use: a thread pool, or one process per decoder."""

    def __init__(self, run: Runner) -> None:
        self._run = run
        self._pool: ThreadPoolExecutor | None = None
        self._processes: dict[str, ForkedWorker] = {}

    def submit(
        self, name: str, calls: Sequence[DecoderCall], runtime: RuntimeConfig, n_decoders: int, in_flight: int
    ) -> Future[Timed]:
        """Queue one decoder's calls; `in_flight` decoders run now, out of `n_decoders` the pipeline holds."""
        if runtime.decoder_concurrency == "thread":
            if self._pool is None:
                workers = max(1, min(runtime.decoder_workers, n_decoders))
                self._pool = ThreadPoolExecutor(workers, thread_name_prefix="decoder")
            threads = threads_per_worker(runtime.torch_threads_per_decoder, in_flight)
            return self._pool.submit(self._run, name, calls, threads)
        if name not in self._processes:  # one long-lived process per decoder stays warm, like a Ray replica
            threads = threads_per_worker(runtime.torch_threads_per_decoder, n_decoders)
            self._processes[name] = ForkedWorker(self._run, threads)
        return self._processes[name].submit(name, calls)

    def close(self) -> None:
        """Stop every worker (a later submit starts new ones)."""
        pool, self._pool = self._pool, None
        processes, self._processes = self._processes, {}
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        for worker in processes.values():
            worker.shutdown()


def threads_per_worker(configured: int | None, workers: int) -> int:
    """Split the cores between concurrent decoders so their torch thread pools don't fight."""
    if configured is not None:
        return configured
    return max(1, (os.cpu_count() or 1) // workers)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Set this thread's torch intra-op threads for the block (0: leave as is)."""
    if n <= 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
