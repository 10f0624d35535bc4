"""Partitions kept on disk by job, so that a second run of the same job does not partition again.

A partition depends only on the network's structure and the partitioner's arguments, so it is
stored under a key made of the network's :meth:`~jaxsdnn.network.SparseNetwork.fingerprint`,
``P``, the method, ``epsilon``, the seed, the options that change the result (passes, tolerance,
contraction) and :data:`CACHE_VERSION`. Thread counts do not enter it: the result does not depend
on them, nor does the worker count. Entries are ordinary partition files (:func:`~jaxsdnn.partition.save_partition`),
written atomically; one that cannot be read or that does not match its key is partitioned again
and replaced, and a cache directory that cannot be written only costs the reuse.

    part, hit = cached_partition(net, 64, method="kahypar")          # ~/.cache/jaxsdnn/partitions
    part, hit = cached_partition(net, 64, cache_dir=False)           # no cache
"""

from __future__ import annotations

import hashlib
import json
import os

from jaxsdnn import partition as _partition
from jaxsdnn.network import SparseNetwork

__all__ = ["CACHE_VERSION", "cache_key", "cached_partition", "default_cache_dir"]

CACHE_VERSION = 3
"""Raised whenever the partitioner may return another partition for the same arguments."""


def default_cache_dir() -> str:
    """``$JAXSDNN_PARTITION_CACHE``, else ``$XDG_CACHE_HOME/jaxsdnn/partitions`` (``~/.cache``)."""
    if os.environ.get("JAXSDNN_PARTITION_CACHE"):
        return os.environ["JAXSDNN_PARTITION_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxsdnn", "partitions")


def cache_key(network: SparseNetwork, num_parts: int, method: str, epsilon: float, seed: int, **options) -> str:
    """The hex key of a partitioning job (``options``: the result-changing keyword arguments)."""
    job = {"version": CACHE_VERSION, "fingerprint": _partition._fingerprint(network), "num_parts": int(num_parts),
           "method": str(method), "epsilon": float(epsilon), "seed": int(seed),
           "options": {k: options[k] for k in sorted(options)}}
    return hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()[:32]


def cached_partition(
    network: SparseNetwork,
    num_parts: int,
    method: str = "kahypar",
    epsilon: float = 0.03,
    seed: int = 0,
    threads: int = 1,
    *,
    cache_dir: str | os.PathLike | None | bool = None,
    passes: int = 3,
    tol: float = 0.001,
    contract: bool = True,
    progress=None,
    workers: int = 1,
) -> tuple[_partition.Partition, bool]:
    """:func:`~jaxsdnn.partition.partition_network`, reusing a stored result of the same job.

    Args:
        cache_dir: the directory (None: :func:`default_cache_dir`; False: no cache).
        the others: as :func:`~jaxsdnn.partition.partition_network`.

    Returns:
        ``(partition, hit)``: ``hit`` is True when it came from the cache.
    """
    options = {"passes": int(passes), "tol": float(tol), "contract": bool(contract)}
    if cache_dir is False or method in ("block", "random") or int(num_parts) == 1:  # cheaper than a lookup
        return _partition.partition_network(network, num_parts, method, epsilon, seed, threads, progress=progress,
                                            workers=workers, **options), False
    _partition._check_arguments(network, num_parts, method, epsilon, seed, threads)
    directory = os.fspath(default_cache_dir() if cache_dir is None or cache_dir is True else cache_dir)
    path = os.path.join(directory, cache_key(network, num_parts, method, epsilon, seed, **options) + ".npz")
    if os.path.exists(path):
        try:
            part = _partition.load_partition(path, network)
            if (part.num_parts, part.method, part.epsilon, part.seed) == (int(num_parts), method, float(epsilon),
                                                                           int(seed)):
                return part, True
        except ValueError:
            pass  # unreadable or another job's: partition again and replace it
    part = _partition.partition_network(network, num_parts, method, epsilon, seed, threads, progress=progress,
                                        workers=workers, **options)
    try:
        os.makedirs(directory, exist_ok=True)
        _partition.save_partition(path, part)
    except OSError:
        pass  # a read-only or full cache only loses the reuse
    return part, False
