"""Layers stacked into segments, so that a network of any depth compiles one loop body per segment.

A :class:`jaxsdnn.plan.Plan` gives every layer its own table shapes and exchange rounds, so a
program that unrolls the layers grows with depth (8.7 s to compile 120 layers, 239 s for 1,920).
This host stage (NumPy only) groups *consecutive* layers whose buckets have the same widths and
grouping into segments, pads them to one shape and gives each segment one exchange schedule:

* rows: every bucket takes the segment's largest row count (padding rows read the sentinel and
  hold zero weights and biases, so they stay 0), and a segment's input and output have the same
  ``n_rows`` (its carried activation: the buckets' rows, or the input's when that is wider, the
  buckets' output then zero-padded), so a loop can run its layers over the stacked tables;
* exchange: the segment's rounds are :func:`jaxsdnn.plan.schedule_rounds` of the element-wise
  largest ``[P, P]`` volume of its layers, each round's message as long as its largest pair needs
  in any layer; a layer sends its own entries and sentinel padding in the rest. A segment is
  only extended while the padding this adds stays within ``max_padding`` of its layers' edges
  (5 % for networks deeper than :data:`SHALLOW_LAYERS`; none for shallower ones, where the
  extra rounds cost more than the few compiled bodies they save; on one device there is no
  exchange and one segment holds every layer of one shape);
* grouping: a bucket runs grouped (a batched GEMM) only where every layer of the segment has it
  grouped; runs of fewer than :data:`MIN_GROUPED_RUN` grouped layers run ungrouped.

The row layout within a bucket is the plan's, so row maps (old local row -> stacked row) carry
the plan's layout through.

References:
    Demirci & Ferhatosmanoglu, "Partitioning sparse deep neural networks for scalable training
    and inference", ICS 2021 (arXiv 2104.11805).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxsdnn.plan import Plan, schedule_rounds

__all__ = ["DEEP_MAX_PADDING", "SHALLOW_LAYERS", "RemoteTables", "Segment", "StackedPlan", "StackedTables",
           "TransposedTables", "remote_tables", "stack_plan", "stack_values", "transposed_tables", "unstack_values"]


SHALLOW_LAYERS = 16
"""Networks of at most this many layers stack only layers whose schedules agree (no padding)."""

DEEP_MAX_PADDING = 0.05
"""The default ``max_padding`` of deeper networks."""


@dataclasses.dataclass(frozen=True)
class StackedTables:
    """Integer tables of one segment of ``S`` layers (leading ``[P]``: devices on the model axis).

    Attributes:
        index: per bucket, ``[P, S, rows_b, width_b]`` int32: extended-input row read by each slot;
            sentinel ``n_ext`` (the segment's extended-input length) for padding.
        send: per round of the segment's schedule, ``[P, S, m_r]`` int32: local rows each device
            sends in that round; sentinel ``n_rows``.
        group_cols: per bucket, ``[P, S, G_b, width_b]`` int32: the shared inputs of each slot of a
            grouped bucket (see :class:`jaxsdnn.plan.LayerTables`), sentinel ``n_ext``;
            ``[P, S, 0, width_b]`` for an ungrouped bucket.
        remote: None, or the segment's :class:`RemoteTables` (the overlapped exchange).
    """

    index: tuple[np.ndarray, ...]
    send: tuple[np.ndarray, ...]
    group_cols: tuple[np.ndarray, ...]
    remote: RemoteTables | None = None


@dataclasses.dataclass(frozen=True)
class RemoteTables:
    """The edges of one segment that read a *received* entry, as a list (leading ``[P, S]``).

    With these a layer splits into the product over its own rows, which needs nothing from the exchange
    and so may run while it is in flight (whether it does is the backend's choice), and the received
    entries' contributions added after (:func:`jaxsdnn.segments.local_segment` with ``overlap``).
    ``E`` is the most such edges of any layer on any device; the rest is padding.

    Attributes:
        row: ``[P, S, E]`` int32: the output row (bucket rows concatenated); sentinel: their total.
        src: ``[P, S, E]`` int32: the received entry read, as a row of the rounds' messages
            concatenated (extended-input row minus ``n_rows``); sentinel ``n_ext - n_rows``.
        wpos: ``[P, S, E]`` int32: the edge's weight, a position in the layer's buckets raveled
            and concatenated; sentinel: their total size.
    """

    row: np.ndarray
    src: np.ndarray
    wpos: np.ndarray


@dataclasses.dataclass(frozen=True)
class Segment:
    """Consecutive layers ``start + 1 .. stop`` (1-based; ``plan.tables[start:stop]``) of one shape.

    Attributes:
        start, stop: the layers, as a slice of ``plan.tables``.
        rounds: the segment's exchange rounds, each a tuple of ``(source, destination)`` pairs.
        n_rows: rows per device of the carried activation (input and output of every layer).
        n_ext: rows per device of the extended input (``n_rows`` plus every round's message).
    """

    start: int
    stop: int
    rounds: tuple[tuple[tuple[int, int], ...], ...]
    n_rows: int
    n_ext: int

    @property
    def num_layers(self) -> int:
        return self.stop - self.start


@dataclasses.dataclass(frozen=True)
class StackedPlan:
    """A plan's layers as segments.

    Attributes:
        plan: the plan it came from.
        segments: the segments, in layer order, covering every layer once.
        tables: per segment, its :class:`StackedTables`.
        row_maps: per layer ``k = 0..L``, ``[P, plan.n_local[k]]`` int64: the stacked row of every
            local row of the plan (layer 0: the identity).
        out_ids: ``[P, segments[-1].n_rows]`` int64: global id of every last-layer row, -1 for padding.
    """

    plan: Plan
    segments: tuple[Segment, ...]
    tables: tuple[StackedTables, ...]
    row_maps: tuple[np.ndarray, ...]
    out_ids: np.ndarray

    @property
    def num_parts(self) -> int:
        return self.plan.num_parts

    def padded_volume(self) -> int:
        """Entries per sample the segments' rounds move over all layers, padding included."""
        return int(sum(len(pairs) * s.shape[2] * seg.num_layers
                       for seg, t in zip(self.segments, self.tables) for pairs, s in zip(seg.rounds, t.send)))

    def stats(self) -> dict:
        return {
            "segments": len(self.segments),
            "stacked_padded_volume_per_sample": self.padded_volume(),
            "stacked_rounds": int(sum(len(s.rounds) * s.num_layers for s in self.segments)),
        }


# ----------------------------------------------------------------------------------------------
# segmentation
# ----------------------------------------------------------------------------------------------
MIN_GROUPED_RUN = 4
"""Grouped layers (:func:`jaxsdnn.kernels.grouped_spmm`) in a run shorter than this run ungrouped,
so that a partition whose grouping flips from layer to layer still stacks; a run that could not
stack with its neighbours anyway (other bucket widths, such as a dense class head) stays grouped."""


def _shapes(plan: Plan) -> list[tuple]:
    """Per layer, what layers must share to stack: bucket widths and which buckets run grouped
    (see :data:`MIN_GROUPED_RUN`)."""
    widths = [tuple(int(i.shape[2]) for i in t.index) for t in plan.tables]
    grouped = [tuple(bool(g.shape[1]) for g in t.group_cols) for t in plan.tables]
    keys = list(zip(widths, grouped))
    out, s = [], 0
    while s < len(keys):
        e = s + 1
        while e < len(keys) and keys[e] == keys[s]:
            e += 1
        alone = (s == 0 or widths[s - 1] != widths[s]) and (e == len(keys) or widths[e] != widths[s])
        flags = grouped[s] if e - s >= MIN_GROUPED_RUN or alone else tuple(False for _ in grouped[s])
        out += [(widths[s], flags)] * (e - s)
        s = e
    return out


def _moved(volume: np.ndarray) -> int:
    """Entries one layer's rounds move (padding included) under the schedule of ``volume``."""
    return sum(len(p) * max(int(volume[a, b]) for a, b in p) for p in schedule_rounds(volume))


def _segments(plan: Plan, shapes: list, max_padding: float) -> list[tuple[int, int, np.ndarray]]:
    L = plan.num_layers
    own = [_moved(v) for v in plan.volume]
    nnz = [int(e.size) for e in plan.edge_slot]  # edges per sample of every layer
    out, s = [], 0
    while s < L:
        vol, e = plan.volume[s].copy(), s + 1
        while e < L and shapes[e] == shapes[s]:
            merged = np.maximum(vol, plan.volume[e])
            extra = _moved(merged) * (e + 1 - s) - sum(own[s : e + 1])
            if extra > max_padding * sum(nnz[s : e + 1]):
                break
            vol, e = merged, e + 1
        out.append((s, e, vol))
        s = e
    return out


# ----------------------------------------------------------------------------------------------
# stacking
# ----------------------------------------------------------------------------------------------
def _bucket_rows(plan: Plan, k: int) -> np.ndarray:
    return np.array([i.shape[1] for i in plan.tables[k].index], dtype=np.int64)


def _piece_rows(plan: Plan, k: int) -> np.ndarray:
    """Per bucket, the slot height of a grouped bucket (0 when ungrouped)."""
    t = plan.tables[k]
    return np.array([i.shape[1] // g.shape[1] if g.shape[1] else 0 for i, g in zip(t.index, t.group_cols)],
                    dtype=np.int64)


def stack_plan(plan: Plan, max_padding: float | None = None) -> StackedPlan:
    """Stacks ``plan``'s layers into segments (see the module docstring).

    Args:
        plan: the plan.
        max_padding: a segment grows while the padding its shared schedule adds (entries moved
            beyond what its layers' own schedules move) stays within this fraction of its edges
            (>= 0; larger: fewer segments, so less compilation, and more bytes moved). None: 0
            for networks of at most :data:`SHALLOW_LAYERS` layers, else :data:`DEEP_MAX_PADDING`.

    Returns:
        the :class:`StackedPlan`.
    """
    if max_padding is None:
        max_padding = 0.0 if plan.num_layers <= SHALLOW_LAYERS else DEEP_MAX_PADDING
    if not max_padding >= 0:
        raise ValueError(f"max_padding must be >= 0, got {max_padding}")
    P = plan.num_parts
    n_local = plan.n_local
    row_maps = [np.broadcast_to(np.arange(n_local[0]), (P, n_local[0])).copy()]
    n_in = n_local[0]
    segments, tables = [], []
    shapes = _shapes(plan)
    for s, e, vol in _segments(plan, shapes, max_padding):
        layers = range(s, e)
        rows = np.max([_bucket_rows(plan, k) for k in layers], axis=0)
        R = np.array([math.gcd(*[int(r) for r in col]) for col in np.array([_piece_rows(plan, k) for k in layers]).T],
                     dtype=np.int64) * np.array(shapes[s][1], dtype=np.int64)
        rows = np.where(R > 0, -(-rows // np.maximum(R, 1)) * R, rows)
        # the carried activation keeps the input's rows when the layers are narrower (a classifier
        # head): the buckets' outputs are zero-padded to it, never the buckets themselves
        n_rows = max(int(rows.sum()), n_in)
        offsets = np.concatenate([[0], np.cumsum(rows)])
        rounds = schedule_rounds(vol)
        m = np.array([max(int(vol[p, q]) for p, q in pairs) for pairs in rounds], dtype=np.int64)
        seg_off = n_rows + np.concatenate([[0], np.cumsum(m)]).astype(np.int64)
        n_ext = int(seg_off[-1])
        seg_round = np.full((P, P), -1, dtype=np.int64)
        for r, pairs in enumerate(rounds):
            for p, q in pairs:
                seg_round[p, q] = r
        widths = shapes[s][0]
        index = [np.full((P, e - s, int(rb), w), n_ext, dtype=np.int32) for rb, w in zip(rows, widths)]
        group_cols = [np.full((P, e - s, int(rb // r) if r else 0, w), n_ext, dtype=np.int32)
                      for rb, r, w in zip(rows, R, widths)]
        send = [np.full((P, e - s, int(mr)), n_rows, dtype=np.int32) for mr in m]
        for i, k in enumerate(layers):
            t, prev_map = plan.tables[k], row_maps[-1]
            n_prev = n_local[k]
            old_m = [int(x.shape[1]) for x in t.send]
            recv_off = n_prev + np.concatenate([[0], np.cumsum(old_m)]).astype(np.int64)
            sender = np.full((max(len(old_m), 1), P), -1, dtype=np.int64)
            for r, pairs in enumerate(plan.rounds[k]):
                for p, q in pairs:
                    sender[r, q] = p

            def remap(values: np.ndarray) -> np.ndarray:
                """Extended-input rows of the plan's layer ``k`` -> the segment's (``[P, ...]``)."""
                dev = np.broadcast_to(np.arange(P).reshape((P,) + (1,) * (values.ndim - 1)), values.shape)
                out = np.full(values.shape, n_ext, dtype=np.int64)
                own = values < n_prev
                out[own] = prev_map[dev[own], values[own]]
                got = (values >= n_prev) & (values < recv_off[-1])
                r = np.searchsorted(recv_off, values[got], side="right") - 1
                out[got] = seg_off[seg_round[sender[r, dev[got]], dev[got]]] + values[got] - recv_off[r]
                return out

            piece = _piece_rows(plan, k)
            for b, (idx, gc) in enumerate(zip(t.index, t.group_cols)):
                index[b][:, i, : idx.shape[1]] = remap(idx)
                if R[b]:  # every layer of the segment has this bucket grouped
                    cols = np.repeat(remap(gc), piece[b] // R[b], axis=1)
                    group_cols[b][:, i, : cols.shape[1]] = cols
            volume = plan.volume[k]
            for r, pairs in enumerate(plan.rounds[k]):
                for p, q in pairs:
                    v = int(volume[p, q])
                    send[seg_round[p, q]][p, i, :v] = prev_map[p, t.send[r][p, :v]]
            old_off = np.concatenate([[0], np.cumsum(_bucket_rows(plan, k))])
            local = np.arange(n_local[k + 1])
            bucket = np.searchsorted(old_off, local, side="right") - 1
            row_maps.append(np.broadcast_to(offsets[bucket] + local - old_off[bucket], (P, local.size)).copy())
        segments.append(Segment(s, e, tuple(tuple(p) for p in rounds), n_rows, n_ext))
        tables.append(StackedTables(tuple(index), tuple(send), tuple(group_cols)))
        n_in = n_rows
    ids = plan.local_ids[-1]
    out_ids = np.full((P, n_in), -1, dtype=np.int64)
    np.put_along_axis(out_ids, row_maps[-1], ids, axis=1)
    return StackedPlan(plan, tuple(segments), tuple(tables), tuple(row_maps), out_ids)


def stack_values(splan: StackedPlan, params) -> tuple[dict, ...]:
    """The plan-layout values (:func:`jaxsdnn.plan.layout_values`) stacked per segment (NumPy).

    Returns:
        per segment ``{"w": per bucket [P, S, rows_b, width_b] (0 at padding), "b": [P, S, n_rows]}``.
    """
    out = []
    for seg, t in zip(splan.segments, splan.tables):
        P, S = splan.num_parts, seg.num_layers
        ws = [np.zeros(i.shape, dtype=np.float32) for i in t.index]
        b = np.zeros((P, S, seg.n_rows), dtype=np.float32)
        for i, k in enumerate(range(seg.start, seg.stop)):
            for wb, w in zip(ws, params["w"][k]):
                w = np.asarray(w)
                wb[:, i, : w.shape[1]] = w
            np.put_along_axis(b[:, i], splan.row_maps[k + 1], np.asarray(params["b"][k]), axis=1)
        out.append({"w": tuple(ws), "b": b})
    return tuple(out)


def unstack_values(splan: StackedPlan, stacked) -> dict:
    """Inverse of :func:`stack_values`: per-segment values back to the plan's layout (NumPy).

    Args:
        stacked: per segment ``{"w": per bucket [P, S, rows_b, width_b], "b": [P, S, n_rows]}``
            (host arrays), or anything indexable the same way (``SparseParams`` of segments).
    """
    ws, bs = [], []
    for seg, values in zip(splan.segments, zip(stacked["w"], stacked["b"])):
        w_seg, b_seg = values
        for i, k in enumerate(range(seg.start, seg.stop)):
            shapes = [t.shape for t in splan.plan.tables[k].index]
            ws.append(tuple(np.asarray(w)[:, i, : sh[1], : sh[2]] for w, sh in zip(w_seg, shapes)))
            bs.append(np.take_along_axis(np.asarray(b_seg)[:, i], splan.row_maps[k + 1], axis=1))
    return {"w": tuple(ws), "b": tuple(bs)}


# ----------------------------------------------------------------------------------------------
# transposed tables (the backward's gathers), in segment coordinates
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TransposedTables:
    """How one segment's backward gathers ``W^T dz`` (leading ``[P, S]``), built from its
    :class:`StackedTables` alone.

    Attributes:
        rev_row: ``[P, S, n_ext, F_u]`` int32: for each extended-input row, the rows of the layer's
            output (``dz``) whose *ungrouped* bucket slots read it; sentinel ``n_rows``.
            ``F_u = 0`` when the segment has no ungrouped bucket.
        rev_w: same shape: the position of that edge's weight in the layer's buckets raveled and
            concatenated; sentinel: their total size.
        fold: ``[P, S, n_ext, F_g]`` int32: for each extended-input row, its positions among the
            *grouped* buckets' transposed slots (bucket ``b`` contributes ``G_b * width_b`` rows,
            slot by slot: ``W_g^T dz_g``), concatenated; sentinel: their total. ``F_g = 0`` when
            the segment has no grouped bucket.
        back: ``[P, S, n_rows, F_s]`` int32: for each own row, its positions in the concatenation
            of the segment's round messages (what :attr:`StackedTables.send` sends), so that the
            partial sums returned by the transposed exchange fold into the rows that were sent;
            sentinel: the total message length. ``F_s = 0`` without an exchange.
    """

    rev_row: np.ndarray
    rev_w: np.ndarray
    fold: np.ndarray
    back: np.ndarray


def _inverse_lists(e: np.ndarray, payload: np.ndarray, n_ext: int, fill: int) -> np.ndarray:
    """``[P, S, M]`` row ids (``>= n_ext``: none) -> ``[P, S, n_ext, F]``: each row's payloads."""
    P, S, M = e.shape
    valid = e < n_ext
    key = (np.arange(P * S, dtype=np.int64).reshape(P, S, 1) * n_ext + e)[valid]
    order = np.argsort(key, kind="stable")
    key, vals = key[order], payload[valid][order]
    counts = np.bincount(key, minlength=P * S * n_ext)
    F = int(counts.max()) if counts.size else 0
    out = np.full((P * S * n_ext, F), fill, dtype=np.int32)
    if F:
        slot = np.arange(key.size) - (np.cumsum(counts) - counts)[key]
        out[key, slot] = vals
    return out.reshape(P, S, n_ext, F)


def transposed_tables(seg: Segment, t: StackedTables) -> TransposedTables:
    """The :class:`TransposedTables` of one segment."""
    n_ext, n_rows = seg.n_ext, seg.n_rows
    P, S = t.index[0].shape[:2]
    grouped = [g.shape[2] > 0 for g in t.group_cols]
    rows = [i.shape[2] for i in t.index]
    row_off = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
    w_off = np.concatenate([[0], np.cumsum([i.shape[2] * i.shape[3] for i in t.index])]).astype(np.int64)
    e_u, r_u, w_u, e_g, pos_g, off_g = [], [], [], [], [], 0
    for b, (idx, gc) in enumerate(zip(t.index, t.group_cols)):
        _, _, rb, wb = idx.shape
        if grouped[b]:
            G = gc.shape[2]
            e_g.append(gc.reshape(P, S, G * wb).astype(np.int64))
            pos_g.append(np.broadcast_to(off_g + np.arange(G * wb), (P, S, G * wb)))
            off_g += G * wb
        else:
            e_u.append(idx.reshape(P, S, rb * wb).astype(np.int64))
            r_u.append(np.broadcast_to(row_off[b] + np.repeat(np.arange(rb), wb), (P, S, rb * wb)))
            w_u.append(np.broadcast_to(w_off[b] + np.arange(rb * wb), (P, S, rb * wb)))
    if e_u:
        e = np.concatenate(e_u, axis=2)
        rev_row = _inverse_lists(e, np.concatenate(r_u, axis=2), n_ext, n_rows)
        rev_w = _inverse_lists(e, np.concatenate(w_u, axis=2), n_ext, int(w_off[-1]))
    else:
        rev_row = rev_w = np.zeros((P, S, n_ext, 0), np.int32)
    fold = (_inverse_lists(np.concatenate(e_g, axis=2), np.concatenate(pos_g, axis=2), n_ext, off_g) if e_g
            else np.zeros((P, S, n_ext, 0), np.int32))
    if t.send:
        sent = np.concatenate(t.send, axis=2).astype(np.int64)
        back = _inverse_lists(sent, np.broadcast_to(np.arange(sent.shape[2]), sent.shape), n_rows, sent.shape[2])
    else:
        back = np.zeros((P, S, n_rows, 0), np.int32)
    return TransposedTables(rev_row, rev_w, fold, back)


def remote_tables(seg: Segment, t: StackedTables) -> RemoteTables:
    """The :class:`RemoteTables` of one segment: every slot whose extended-input row is received."""
    n_ext, n_rows = seg.n_ext, seg.n_rows
    P, S = t.index[0].shape[:2]
    rows = [i.shape[2] for i in t.index]
    row_off = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
    w_off = np.concatenate([[0], np.cumsum([i.shape[2] * i.shape[3] for i in t.index])]).astype(np.int64)
    e = np.concatenate([i.reshape(P, S, -1).astype(np.int64) for i in t.index], axis=2)
    row = np.concatenate([np.broadcast_to(row_off[b] + np.repeat(np.arange(i.shape[2]), i.shape[3]), (P, S, i[0, 0].size))
                          for b, i in enumerate(t.index)], axis=2)
    wpos = np.broadcast_to(np.arange(w_off[-1]), (P, S, int(w_off[-1])))
    got = (e >= n_rows) & (e < n_ext)
    E = int(got.sum(axis=2).max()) if got.size else 0
    out = [np.full((P, S, E), fill, dtype=np.int32) for fill in (row_off[-1], n_ext - n_rows, w_off[-1])]
    p, s, _ = np.nonzero(got)  # row-major: the edges of each (device, layer) in slot order
    counts = got.sum(axis=2).reshape(-1)
    slot = np.arange(p.size) - np.repeat(np.cumsum(counts) - counts, counts)
    for o, v in zip(out, (row[got], e[got] - n_rows, wpos[got])):
        o[p, s, slot] = v
    return RemoteTables(*out)
