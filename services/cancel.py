"""Cooperative cancellation of a model call running in a worker thread.

A caller that gives up (its request timed out) sets the call's event; the worker thread then
raises `Cancelled` at its next check, which is every torch module forward (a global forward
pre-hook, installed once) or an explicit `check()` in non-torch code. So an abandoned decoder
or generate call stops within one module forward and releases its engine's lock, instead of
running to the end while later requests wait.

    with cancellable(event):
        pipeline.run_decoder(name, calls)   # raises Cancelled soon after event.set()
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import torch

_local = threading.local()
_hook_lock = threading.Lock()
_hook_installed = False


class Cancelled(Exception):
    """The caller gave up on this call; its result would be discarded."""


class Flag(Protocol):
    def is_set(self) -> bool: ...


class AllSet:
    """Set when every one of several callers' events is set (a batch is cancelled only when nobody waits)."""

    def __init__(self, events: Sequence[Flag | None]):
        self.events = list(events)

    def is_set(self) -> bool:
        return bool(self.events) and all(e is not None and e.is_set() for e in self.events)


def check() -> None:
    """Raise Cancelled when the current thread's call has been cancelled."""
    flag = getattr(_local, "flag", None)
    if flag is not None and flag.is_set():
        raise Cancelled("the caller stopped waiting for this call")


def _forward_pre_hook(module: Any, args: Any) -> None:
    check()


def _install_hook() -> None:
    global _hook_installed
    with _hook_lock:
        if not _hook_installed:
            torch.nn.modules.module.register_module_forward_pre_hook(_forward_pre_hook)
            _hook_installed = True


@contextmanager
def cancellable(flag: Flag | None) -> Iterator[None]:
    """Run the body so that setting `flag` stops it at the next module forward or check()."""
    if flag is None:
        yield
        return
    _install_hook()
    check_before = getattr(_local, "flag", None)
    _local.flag = flag
    try:
        check()
        yield
    finally:
        _local.flag = check_before
