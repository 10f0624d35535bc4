"""Counts compilations and persistent-cache hits through ``jax.monitoring`` events.

JAX records an event per persistent-cache hit and miss and a duration per traced function,
lowering and backend compile (a cache hit still records its backend-compile step, the load).
``counting()`` reports the difference over a block: compiled programs are backend compiles less
cache hits, and the seconds are all of tracing, lowering and compiling (cache loads included).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading

import jax

_DURATIONS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_BACKEND = "/jax/core/compile/backend_compile_duration"
_HIT = "/jax/compilation_cache/cache_hits"

_lock = threading.Lock()
_totals = {"seconds": 0.0, "backend": 0, "hits": 0}
_registered = False


def _on_event(event: str, **_) -> None:
    if event == _HIT:
        with _lock:
            _totals["hits"] += 1


def _on_duration(event: str, duration: float, **_) -> None:
    if event in _DURATIONS:
        with _lock:
            _totals["seconds"] += duration
            _totals["backend"] += event == _BACKEND


def _register() -> None:
    global _registered
    with _lock:
        if _registered:
            return
        jax.monitoring.register_event_listener(_on_event)
        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        _registered = True


@dataclasses.dataclass
class Compiled:
    """What a :func:`counting` block compiled: ``compiles`` (programs compiled by XLA),
    ``cache_hits`` (programs loaded from the persistent cache), ``seconds``."""

    compiles: int = 0
    cache_hits: int = 0
    seconds: float = 0.0


@contextlib.contextmanager
def counting():
    """``with counting() as c: ...``: ``c`` holds the block's compilations when it ends."""
    _register()
    with _lock:
        before = dict(_totals)
    out = Compiled()
    try:
        yield out
    finally:
        with _lock:
            out.cache_hits = _totals["hits"] - before["hits"]
            out.compiles = _totals["backend"] - before["backend"] - out.cache_hits
            out.seconds = _totals["seconds"] - before["seconds"]
