"""``fork()`` safety for optimizer locks, shared by the numpy and torch front ends.

A lock held by another thread at the moment of ``os.fork()`` stays held forever in the child,
where that thread does not exist. Before a fork, every live optimizer's lock is taken (waiting,
a bounded time, for a step running on another thread to finish), so that the child's copy of
each optimizer lies between two steps; after it, the parent releases them and the child gives
every optimizer a fresh lock.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

__all__ = ["FORK_WAIT_SECONDS", "track"]

#: The longest a ``fork()`` waits for another thread's step, per optimizer.
FORK_WAIT_SECONDS = 10.0

_LIVE: weakref.WeakSet[Any] = weakref.WeakSet()
_HELD_ACROSS_FORK: list[Any] = []


def track(optimizer: Any) -> None:
    """Give ``optimizer._lock`` (a ``threading.RLock``) this fork protection."""
    _LIVE.add(optimizer)


def _before_fork() -> None:
    for optimizer in list(_LIVE):
        if optimizer._lock.acquire(timeout=FORK_WAIT_SECONDS):
            _HELD_ACROSS_FORK.append(optimizer)


def _after_fork_in_parent() -> None:
    while _HELD_ACROSS_FORK:
        _HELD_ACROSS_FORK.pop()._lock.release()


def _after_fork_in_child() -> None:
    _HELD_ACROSS_FORK.clear()
    for optimizer in list(_LIVE):
        optimizer._lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
