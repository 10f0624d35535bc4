"""Per-layer throughput of the jaxsdnn kernel against scipy CSR and SuiteSparse:GraphBLAS.

One layer ``Y = min(max(Y W + b, 0), 32)`` with ``W`` n x n at 32 nonzeros per neuron (the Graph
Challenge shape), for n in {1024, 4096} and batch in {1000, 10000}, plus a pruned-like layer whose
fan-in varies (heavy tail) to show what bucketing rows by length buys. Every timing is the median
of ``--repeats`` runs after a warm-up; compilation is reported apart. Ratios are measured in this
one run. GraphBLAS runs both its natural sparse-activation product and a dense (full) one and the
faster counts.

    python scripts/bench_kernels.py [--quick] [--repeats 5] [--out bench_out]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from jaxsdnn import kernels
from jaxsdnn.plan import choose_bucket_widths

from _report import write_report  # scripts/_report.py

BIAS, CAP = -0.3, 32.0


def layer(n: int, fan_in: np.ndarray, seed: int) -> sp.csr_array:
    """``W`` n x n (Y.W: column j = inputs of neuron j) with the given fan-in per output neuron."""
    rng = np.random.default_rng(seed)
    cols = np.repeat(np.arange(n), fan_in)
    rows = np.concatenate([rng.choice(n, f, replace=False) for f in fan_in])
    vals = np.full(rows.size, 1 / 16, dtype=np.float32)
    return sp.csr_array((vals, (rows, cols)), shape=(n, n))


def padded_blocks(w: sp.csr_array, bucketed: bool):
    """Padded-row buckets of ``W^T`` (row j = neuron j) and the row order they produce."""
    wt = sp.csr_array(w.T)
    lengths = np.diff(wt.indptr)
    widths = choose_bucket_widths(lengths) if bucketed else np.array([lengths.max()])
    bucket = np.searchsorted(widths, lengths, side="left")
    idx, val, order = [], [], []
    for b, width in enumerate(widths):
        rows = np.flatnonzero(bucket == b)
        i = np.full((rows.size, width), w.shape[0], dtype=np.int32)
        v = np.zeros((rows.size, width), dtype=np.float32)
        for r_out, r in enumerate(rows):
            s, e = wt.indptr[r], wt.indptr[r + 1]
            i[r_out, : e - s] = wt.indices[s:e]
            v[r_out, : e - s] = wt.data[s:e]
        idx.append(jnp.asarray(i))
        val.append(jnp.asarray(v))
        order.append(rows)
    return idx, val, np.concatenate(order)


def timed(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def bench_case(name, w, batch, repeats, seed=0, with_unbucketed=False):
    n = w.shape[0]
    rng = np.random.default_rng(seed)
    x_bm = ((rng.random((batch, n)) < 0.25) * rng.random((batch, n))).astype(np.float32)  # [batch, n]
    edges = w.nnz * batch
    row = {"case": name, "n": n, "batch": batch, "nnz": int(w.nnz)}

    # jaxsdnn: feature-major padded-row buckets
    def jx_fn(idx, val):
        f = jax.jit(lambda x, i, v: kernels.activation(kernels.bucketed_spmm(x, i, v) + BIAS, CAP))
        x_fm = jnp.asarray(x_bm.T.copy())
        t0 = time.perf_counter()
        out = f(x_fm, idx, val).block_until_ready()
        compile_s = time.perf_counter() - t0
        return out, compile_s, timed(lambda: f(x_fm, idx, val).block_until_ready(), repeats)

    idx, val, order = padded_blocks(w, bucketed=True)
    out, row["jaxsdnn_compile_s"], t = jx_fn(idx, val)
    row["jaxsdnn"] = edges / t
    row["buckets"] = len(idx)
    if with_unbucketed:
        idx1, val1, _ = padded_blocks(w, bucketed=False)
        _, _, t1 = jx_fn(idx1, val1)
        row["jaxsdnn_one_bucket"] = edges / t1

    # scipy CSR: W^T (CSR) times the feature-major dense activation
    wt = sp.csr_array(w.T)
    x_fm = np.ascontiguousarray(x_bm.T)
    t = timed(lambda: np.clip(wt @ x_fm + BIAS, 0, CAP), repeats)
    row["scipy"] = edges / t
    ref = np.clip(wt @ x_fm + BIAS, 0, CAP)
    np.testing.assert_allclose(np.asarray(out), ref[order], rtol=1e-4, atol=1e-4)

    try:
        import graphblas as gb

        W = gb.io.from_scipy_sparse(w)
        Ys = gb.io.from_scipy_sparse(sp.csr_array(x_bm))
        Yd = gb.Matrix.from_dense(x_bm)

        def gb_step(Y):
            Z = Y.mxm(W, gb.semiring.plus_times).new()
            Z = Z.apply(gb.binary.plus, BIAS).new()  # bias on the stored entries (Graph Challenge)
            Z = Z.select(gb.select.valuegt, 0).new()
            return Z.apply(gb.binary.min, CAP).new()

        row["graphblas_sparse"] = edges / timed(lambda: gb_step(Ys), repeats)
        row["graphblas_dense"] = edges / timed(lambda: gb_step(Yd), repeats)
        row["graphblas"] = max(row["graphblas_sparse"], row["graphblas_dense"])
    except ImportError:
        row["graphblas"] = float("nan")
    best = np.nanmax([row["scipy"], row["graphblas"]])
    row["ratio_vs_best"] = row["jaxsdnn"] / best
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="n=1024 and 4096 at batch 1000 only")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    rows = []
    batches = [1000] if args.quick else [1000, 10000]
    for n in (1024, 4096):
        w = layer(n, np.full(n, 32), seed=n)
        for batch in batches:
            rows.append(bench_case("uniform-32", w, batch, args.repeats))
    # pruned-like: fan-in from a heavy-tailed distribution, mean about 32, a few rows of 512+
    rng = np.random.default_rng(1)
    n = 4096
    fan = np.minimum(np.maximum(1, rng.lognormal(np.log(20), 1.0, n).astype(int)), 1024)
    w = layer(n, fan, seed=2)
    rows.append(bench_case("pruned-lognormal", w, batches[-1], args.repeats, with_unbucketed=True))

    info = (f"machine: {platform.machine()}, {os.cpu_count()} cpus, jax {jax.__version__} "
            f"({jax.default_backend()}), numpy {np.__version__}, scipy {sp.__name__ and __import__('scipy').__version__}")
    lines = [f"# Kernel benchmark ({info})", "",
             "| case | n | batch | buckets | jaxsdnn edges/s | scipy CSR | GraphBLAS | jaxsdnn / best baseline | compile s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['n']} | {r['batch']} | {r['buckets']} | {r['jaxsdnn']:.3g} | {r['scipy']:.3g} | "
                     f"{r['graphblas']:.3g} | {r['ratio_vs_best']:.2f}x | {r['jaxsdnn_compile_s']:.2f} |")
    pruned = rows[-1]
    lines += ["", f"pruned-lognormal (max fan-in {int(fan.max())}, mean {fan.mean():.1f}): bucketed "
              f"{pruned['jaxsdnn']:.3g} edges/s vs one padded bucket {pruned['jaxsdnn_one_bucket']:.3g} "
              f"({pruned['jaxsdnn'] / pruned['jaxsdnn_one_bucket']:.1f}x)"]
    write_report(args.out, "bench_kernels", "\n".join(lines), rows)


if __name__ == "__main__":
    main()
