"""router.workers: decoder calls in a thread pool or forked processes, each worker holding what it serves."""

from __future__ import annotations

import os

import pytest

from router.config import RuntimeConfig
from router.workers import DecoderWorkers, ForkedWorker, threads_per_worker


def test_a_forked_worker_serves_its_runner_and_reraises_its_errors():
    def run(name, calls, threads):
        if name == "boom":
            raise ValueError(f"{name} failed")
        return [(name, c, os.getpid()) for c in calls], float(threads)

    worker = ForkedWorker(run, threads=1)
    try:
        results, ms = worker.submit("det", [1, 2]).result(timeout=30)
        assert [r[:2] for r in results] == [("det", 1), ("det", 2)] and ms == 0.0  # the child runs with threads=0
        assert results[0][2] != os.getpid()  # in its own process
        with pytest.raises(ValueError, match="boom failed"):
            worker.submit("boom", [1]).result(timeout=30)
        assert worker.submit("det", [3]).result(timeout=30)[0][0][:2] == ("det", 3)  # still serving after an error
    finally:
        worker.shutdown()
    assert not worker._process.is_alive()


def test_workers_follow_the_runtime_config_and_close_restarts_them():
    seen = []
    workers = DecoderWorkers(lambda name, calls, threads: (seen.append((name, threads)) or [], 1.0))
    runtime = RuntimeConfig(decoder_concurrency="thread", torch_threads_per_decoder=3)
    assert workers.submit("a", [], runtime, n_decoders=2, in_flight=2).result() == ([], 1.0)
    workers.close()
    assert workers.submit("b", [], runtime, n_decoders=2, in_flight=2).result() == ([], 1.0)  # a new pool
    workers.close()
    assert seen == [("a", 3), ("b", 3)]
    assert threads_per_worker(None, 10**6) == 1 and threads_per_worker(5, 2) == 5
