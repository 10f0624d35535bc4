"""The communication plan: host-side NumPy tables for neuron-partitioned execution.

From a network and a partition (the owning device of every neuron of every layer) this builds,
for every layer ``k`` and device ``p``:

* the *local layout* of layer ``k`` on ``p``: which neurons it owns, in which row (rows are
  grouped into buckets of similar fan-in, padded to the same count on every device);
* the padded-row blocks of the neurons it owns, with column indices into ``p``'s *extended
  input*: its own layer ``k-1`` rows, then the entries it receives, round after round;
* the exchange before layer ``k``: rounds of ``ppermute`` pairs (each device sends to at most
  one and receives from at most one per round; pairs that exchange nothing get no round), and
  per round the local rows each device sends (padded to the round's largest message);
* the transposed tables the backward pass gathers through (no scatter-adds): per extended-input
  row, the ``(output row, weight slot)`` pairs that read it, and per local row, where its partial
  sums come back from the devices it was sent to;
* groups of rows that read identical inputs (dense blocks), whose weight gradient is then one
  batched GEMM instead of a gather per edge.

Everything here is NumPy and runs on the host; ``sharded`` and ``engine`` put the tables on
devices. Padding always uses an out-of-range sentinel index (the length of the indexed axis).

References:
    Demirci & Ferhatosmanoglu, "Partitioning sparse deep neural networks for scalable training
    and inference", ICS 2021 (arXiv 2104.11805).
"""

from __future__ import annotations

import dataclasses
import numpy as np

from jaxsdnn.network import SparseNetwork

__all__ = ["LayerTables", "Plan", "build_plan", "choose_bucket_widths", "schedule_rounds"]


# ----------------------------------------------------------------------------------------------
# bucketing and round scheduling
# ----------------------------------------------------------------------------------------------
def _width_grid(max_len: int) -> np.ndarray:
    grid = set(range(0, min(max_len, 8) + 1))
    w = 8.0
    while w < max_len:
        w *= 1.125
        grid.add(int(np.ceil(w)))
    grid.add(max_len)
    return np.array(sorted(g for g in grid if g <= max_len), dtype=np.int64)


def choose_bucket_widths(
    lengths: np.ndarray, max_buckets: int = 6, overhead: float = 0.02, min_overhead: int = 4096
) -> np.ndarray:
    """Bucket widths (padded row lengths) for rows of the given lengths.

    Minimises ``sum_b width_b * rows_b + penalty * (#buckets - 1)`` over at most
    ``max_buckets`` buckets whose widths come from a grid (every length up to 8, then steps of
    12.5%), by dynamic programming, with ``penalty = max(overhead * sum(lengths), min_overhead)``
    slots (a bucket costs a loop and a concatenation). Rows of equal length give one bucket, and
    so do small layers.

    Args:
        lengths: ``[rows]`` non-negative ints.

    Returns:
        ``[buckets]`` increasing widths; the last one is ``max(lengths)``.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size == 0:
        return np.zeros(1, dtype=np.int64)
    grid = _width_grid(int(lengths.max()))
    # rows that fall in (grid[a-1], grid[a]]
    slot = np.searchsorted(grid, lengths, side="left")
    counts = np.bincount(slot, minlength=grid.size).astype(np.float64)
    used = np.flatnonzero(counts)
    widths, cnt = grid[used].astype(np.float64), counts[used]
    m = used.size
    cum = np.concatenate([[0.0], np.cumsum(cnt)])
    penalty = max(overhead * float(lengths.sum()), float(min_overhead))
    inf = np.inf
    # best[j][b]: cost of covering the first j used widths with b buckets (last bucket ends at j)
    best = np.full((m + 1, max_buckets + 1), inf)
    back = np.zeros((m + 1, max_buckets + 1), dtype=np.int64)
    best[0, 0] = 0.0
    for j in range(1, m + 1):
        for b in range(1, max_buckets + 1):
            starts = np.arange(0, j)
            cost = best[starts, b - 1] + widths[j - 1] * (cum[j] - cum[starts]) + penalty
            i = int(np.argmin(cost))
            best[j, b], back[j, b] = cost[i], starts[i]
    b = int(np.argmin(best[m]))
    ends, j = [], m
    while b > 0:
        ends.append(j - 1)
        j, b = back[j, b], b - 1
    return widths[np.array(ends[::-1])].astype(np.int64)


def schedule_rounds(volume: np.ndarray) -> list[list[tuple[int, int]]]:
    """Groups the device pairs that exchange something into as few ``ppermute`` rounds as possible.

    A round is a partial permutation: every device sends to at most one and receives from at
    most one device. The pairs form a bipartite graph (senders, receivers), so ``D`` rounds
    suffice, ``D`` being the most pairs any device sends or receives in (König's edge-colouring
    theorem); fewer are impossible. Pairs are placed in decreasing order of volume into the first
    round where both ends are free, so messages of similar size share a round and padding stays
    small; when no round has both ends free, an alternating path of two rounds is swapped to make
    one (the constructive proof of the theorem). The greedy placement alone needed 16 to 18 % more
    rounds on the Graph Challenge network's kahypar partitions (P = 4 and 8).

    Args:
        volume: ``[P, P]`` entries device ``p`` sends to device ``q`` (diagonal ignored).

    Returns:
        rounds, each a list of ``(source, destination)`` pairs sorted by source.
    """
    volume = np.asarray(volume)
    P = volume.shape[0]
    src, dst = np.nonzero(volume)
    keep = src != dst
    src, dst = src[keep], dst[keep]
    if src.size == 0:
        return []
    D = int(max(np.bincount(src, minlength=P).max(), np.bincount(dst, minlength=P).max()))
    to = [[-1] * P for _ in range(D)]  # to[r][p]: where p sends in round r
    frm = [[-1] * P for _ in range(D)]  # frm[r][q]: who sends to q in round r
    all_rounds = (1 << D) - 1
    free_send, free_recv = [all_rounds] * P, [all_rounds] * P  # bit r set: free in round r

    def place(p, q, r):
        to[r][p], frm[r][q] = q, p
        free_send[p] &= ~(1 << r)
        free_recv[q] &= ~(1 << r)

    def lift(p, q, r):
        to[r][p], frm[r][q] = -1, -1
        free_send[p] |= 1 << r
        free_recv[q] |= 1 << r

    def lowest(bits):
        return (bits & -bits).bit_length() - 1

    for e in np.lexsort((dst, src, -volume[src, dst])):
        p, q = int(src[e]), int(dst[e])
        both = free_send[p] & free_recv[q]
        if both:
            place(p, q, lowest(both))
            continue
        a, b = lowest(free_send[p]), lowest(free_recv[q])  # a is busy at q, b busy at p
        # the path from q alternating a, b, a, ... never reaches p: swap a and b along it
        path, node, colour = [], q, a
        while True:
            if colour == a:
                sender = frm[a][node]
                if sender < 0:
                    break
                path.append((sender, node, a))
                node, colour = sender, b
            else:
                receiver = to[b][node]
                if receiver < 0:
                    break
                path.append((node, receiver, b))
                node, colour = receiver, a
        for x, y, c in path:
            lift(x, y, c)
        for x, y, c in path:
            place(x, y, b if c == a else a)
        place(p, q, a)
    return [[(p, to[r][p]) for p in range(P) if to[r][p] >= 0] for r in range(D)]


# ----------------------------------------------------------------------------------------------
# the plan
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LayerTables:
    """Integer tables of one layer ``k`` (all leading ``[P]`` = devices on the model axis).

    Attributes:
        index: per forward bucket ``b``, ``[P, rows_b, width_b]`` int32: extended-input row read by
            each slot; sentinel ``n_ext`` for padding.
        send: per exchange round ``r``, ``[P, m_r]`` int32: local layer ``k-1`` rows that each
            device sends in that round (sentinel ``n_local[k-1]``; all sentinel if it sends nothing).
        t_row: per transposed bucket, ``[P, trows, twidth]`` int32: local layer ``k`` row (of the
            stacked forward buckets) that reads an extended-input row; sentinel ``n_local[k]``.
        t_weight: same shape: position of that edge's weight in the device's flattened weights
            (forward buckets raveled and concatenated); sentinel = their total size.
        t_perm: ``[P, n_ext]`` int32: row of the stacked transposed-bucket output that holds each
            extended-input row's gradient; sentinel (no reader) = total transposed rows. ``[P, 0]``
            when that order is already the extended-input order (one bucket, every row read).
        fold: ``[P, n_local[k-1], f]`` int32: for each local layer ``k-1`` row, where its partial
            sums come back in the concatenation of the returned round buffers; sentinel = total
            round length.
        group_cols: per forward bucket, ``[P, G, width]`` int32, for a *grouped* bucket: its rows
            are ``G`` slots of ``R = rows_b / G`` consecutive rows, each slot holding neurons that
            read exactly the same inputs (a dense ``R x width`` block, as in RadiX-Net's
            ``kron(ones(16,16), .)`` layers), padded inside the slot; ``group_cols[p, g]`` are the
            slot's shared extended-input rows (sentinel ``n_ext`` for an empty slot). ``[P, 0,
            width]`` for a bucket without that structure.
    """

    index: tuple[np.ndarray, ...]
    send: tuple[np.ndarray, ...]
    t_row: tuple[np.ndarray, ...]
    t_weight: tuple[np.ndarray, ...]
    t_perm: np.ndarray
    fold: np.ndarray
    group_cols: tuple[np.ndarray, ...]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything the devices need to run a network under a partition, as host arrays.

    Attributes:
        num_parts: P, devices on the model axis.
        sizes: ``(n_0, ..., n_L)``.
        cap: ReLU cap of the network (``None``: plain ReLU).
        fingerprint: structure fingerprint of the network the plan was built for.
        local_ids: per layer ``k = 0..L``, ``[P, n_local[k]]`` int64: the global neuron in each
            local row; -1 for padding rows.
        rounds: per layer ``k = 1..L``, the exchange rounds before it, each a tuple of
            ``(source, destination)`` device pairs (static, hashable).
        tables: per layer ``k = 1..L``, its :class:`LayerTables`.
        edge_slot: per layer, ``[nnz]`` int64: for every stored edge in the network's CSR order,
            its position in ``concatenate([w.ravel() for w in weight buckets])`` (``[P, ...]``
            buckets raveled with the device axis first).
        volume: per layer, ``[P, P]`` int64 entries sent from p to q before the layer.
        widths: per layer, forward bucket widths.
    """

    num_parts: int
    sizes: tuple[int, ...]
    cap: float | None
    fingerprint: str
    local_ids: tuple[np.ndarray, ...]
    rounds: tuple[tuple[tuple[tuple[int, int], ...], ...], ...]
    tables: tuple[LayerTables, ...]
    edge_slot: tuple[np.ndarray, ...]
    volume: tuple[np.ndarray, ...]
    widths: tuple[np.ndarray, ...]

    @property
    def num_layers(self) -> int:
        return len(self.tables)

    @property
    def n_local(self) -> tuple[int, ...]:
        """Padded rows per device of every layer ``0..L``."""
        return tuple(int(ids.shape[1]) for ids in self.local_ids)

    # -- statistics ---------------------------------------------------------------------------
    def needed_volume(self) -> np.ndarray:
        """``[L]`` entries per input sample that cross devices before each layer (forward)."""
        return np.array([int(v.sum()) for v in self.volume], dtype=np.int64)

    def padded_volume(self) -> np.ndarray:
        """``[L]`` entries per sample that the ``ppermute`` rounds move, padding included."""
        return np.array(
            [sum(len(pairs) * s.shape[1] for pairs, s in zip(rs, t.send)) for rs, t in zip(self.rounds, self.tables)],
            dtype=np.int64,
        )

    def rounds_per_layer(self) -> np.ndarray:
        return np.array([len(r) for r in self.rounds], dtype=np.int64)

    def stats(self) -> dict:
        """JSON-ready summary: needed and padded volume per sample, rounds."""
        needed, padded = self.needed_volume(), self.padded_volume()
        return {
            "devices": self.num_parts,
            "volume_per_sample": int(needed.sum()),
            "padded_volume_per_sample": int(padded.sum()),
            "padding_ratio": float(padded.sum() / needed.sum()) if needed.sum() else 1.0,
            "rounds": int(self.rounds_per_layer().sum()),
            "per_layer_volume": needed.tolist(),
        }


def _parts_of(partition, network: SparseNetwork) -> tuple[list[np.ndarray], int]:
    if hasattr(partition, "validate_for"):
        partition.validate_for(network)
    parts = getattr(partition, "parts", partition)
    parts = [np.asarray(p, dtype=np.int64) for p in parts]
    sizes = network.sizes
    if len(parts) != len(sizes):
        raise ValueError(
            f"partition has {len(parts)} layers (layer0..layer{len(parts) - 1}) but the network has "
            f"{len(sizes)} (layer0..layer{len(sizes) - 1})"
        )
    num_parts = int(getattr(partition, "num_parts", max(int(p.max()) for p in parts) + 1))
    for k, (p, n) in enumerate(zip(parts, sizes)):
        if p.shape != (n,):
            raise ValueError(f"partition layer{k}: {p.shape=} does not match the network's {n} neurons")
        if p.size and (p.min() < 0 or p.max() >= num_parts):
            bad = int(np.flatnonzero((p < 0) | (p >= num_parts))[0])
            raise ValueError(f"partition layer{k}: neuron {bad} has device {p[bad]}, expected [0, {num_parts})")
        if n < num_parts:
            raise ValueError(
                f"layer {k} has {n} neurons, fewer than the {num_parts} devices; use at most {n} devices"
            )
    return parts, num_parts


def _local_layout(owner: np.ndarray, bucket: np.ndarray, num_parts: int, num_buckets: int,
                  group: np.ndarray | None = None, piece_rows: np.ndarray | None = None):
    """Rows per (device, bucket), padded to the largest device; returns ids, pos, rows_b, offsets.

    With ``group`` (an input class per neuron) and ``piece_rows`` (per bucket, 0 or ``R``), a
    bucket with ``R > 0`` is laid out as slots of ``R`` rows: the neurons of one class on one
    device (a *piece*) fill consecutive rows of a slot, padded inside it; a piece longer than ``R``
    takes several slots. Other buckets hold their rows by neuron id.
    """
    n = owner.size
    group = np.zeros(n, dtype=np.int64) if group is None else group
    piece_rows = np.zeros(num_buckets, dtype=np.int64) if piece_rows is None else piece_rows
    group = np.where(piece_rows[bucket] > 0, group, 0)  # ungrouped buckets: rows by id
    order = np.lexsort((np.arange(n), group, bucket, owner))  # by device, bucket, class, id
    o_dev, o_b, o_g = owner[order], bucket[order], group[order]
    key = o_dev * num_buckets + o_b
    key_start = np.searchsorted(key, key, side="left")
    rank = np.arange(n) - key_start  # rank within (device, bucket)
    R = piece_rows[o_b]
    if (R > 0).any():
        first = np.ones(n, dtype=bool)  # first neuron of its (device, bucket, class) piece
        first[1:] = (key[1:] != key[:-1]) | (o_g[1:] != o_g[:-1])
        in_piece = np.arange(n) - np.maximum.accumulate(np.where(first, np.arange(n), 0))
        height = np.maximum(R, 1)
        slot = np.cumsum(first | (in_piece % height == 0)) - 1
        slot = slot - slot[key_start]  # slot within (device, bucket)
        rank = np.where(R > 0, slot * R + in_piece % height, rank)
    counts = np.zeros((num_parts, num_buckets), dtype=np.int64)
    np.maximum.at(counts, (o_dev, o_b), rank + 1)
    rows_b = counts.max(axis=0)
    rows_b = np.where(piece_rows > 0, -(-rows_b // np.maximum(piece_rows, 1)) * piece_rows, rows_b)
    offsets = np.concatenate([[0], np.cumsum(rows_b)])
    pos = np.empty(n, dtype=np.int64)
    pos[order] = offsets[o_b] + rank
    ids = np.full((num_parts, int(offsets[-1])), -1, dtype=np.int64)
    ids[owner, pos] = np.arange(n)
    return ids, pos, rows_b, offsets


def _piece_rows(owner: np.ndarray, bucket: np.ndarray, group: np.ndarray, has_inputs: np.ndarray,
                num_parts: int, num_buckets: int, max_waste: float = 1.25) -> np.ndarray:
    """Per bucket, the slot height ``R`` of its grouped layout, or 0 where grouping does not pay.

    ``R`` is the largest piece (one input class on one device) among neurons with inputs; a
    bucket is grouped when ``R >= 2`` and its slots (a piece longer than ``R``, such as the
    neurons without inputs, takes several) cost at most ``max_waste`` times its rows.
    """
    R = np.zeros(num_buckets, dtype=np.int64)
    ng = int(group.max(initial=-1)) + 1
    for b in range(num_buckets):
        sel = bucket == b
        real = sel & has_inputs
        if not real.any():
            continue
        r = int(np.unique(owner[real] * ng + group[real], return_counts=True)[1].max())
        if r < 2:
            continue
        pieces, size = np.unique(owner[sel] * ng + group[sel], return_counts=True)
        slots = np.bincount(pieces // ng, weights=-(-size // r), minlength=num_parts)
        rows = np.bincount(owner[sel], minlength=num_parts).max()
        if slots.max() * r <= max_waste * rows:
            R[b] = r
    return R


def _transposed_tables(owner_rows, ext_of_edge, row_of_edge, wpos_of_edge, n_ext, n_rows, n_wflat, num_parts):
    """Per device: for every extended-input row, the (output row, weight position) pairs reading it."""
    fan_out = np.zeros((num_parts, n_ext), dtype=np.int64)
    np.add.at(fan_out, (owner_rows, ext_of_edge), 1)
    widths = choose_bucket_widths(fan_out[fan_out > 0]) if (fan_out > 0).any() else np.array([0])
    has = fan_out > 0
    dev, ext = np.nonzero(has)
    bucket = np.searchsorted(widths, fan_out[dev, ext], side="left")
    nb = widths.size
    counts = np.zeros((num_parts, nb), dtype=np.int64)
    np.add.at(counts, (dev, bucket), 1)
    rows_b = counts.max(axis=0)
    offsets = np.concatenate([[0], np.cumsum(rows_b)])
    order = np.lexsort((ext, bucket, dev))
    dev, ext, bucket = dev[order], ext[order], bucket[order]
    key = dev * nb + bucket
    rank = np.arange(dev.size) - np.searchsorted(key, key, side="left")
    trow = offsets[bucket] + rank  # row of the stacked transposed output
    t_perm = np.full((num_parts, n_ext), int(offsets[-1]), dtype=np.int64)
    t_perm[dev, ext] = trow
    # edges sorted by (device, transposed row)
    erow = t_perm[owner_rows, ext_of_edge]
    eorder = np.lexsort((row_of_edge, erow, owner_rows))
    e_dev, e_trow = owner_rows[eorder], erow[eorder]
    flat_key = e_dev * int(offsets[-1]) + e_trow
    slot = np.arange(eorder.size) - np.searchsorted(flat_key, flat_key, side="left")
    t_row, t_weight = [], []
    for b in range(nb):
        rb, wb = int(rows_b[b]), int(widths[b])
        tr = np.full((num_parts, rb, wb), n_rows, dtype=np.int64)
        tw = np.full((num_parts, rb, wb), n_wflat, dtype=np.int64)
        sel = (e_trow >= offsets[b]) & (e_trow < offsets[b + 1])
        tr[e_dev[sel], e_trow[sel] - offsets[b], slot[sel]] = row_of_edge[eorder][sel]
        tw[e_dev[sel], e_trow[sel] - offsets[b], slot[sel]] = wpos_of_edge[eorder][sel]
        t_row.append(tr.astype(np.int32))
        t_weight.append(tw.astype(np.int32))
    if np.array_equal(t_perm, np.broadcast_to(np.arange(n_ext), t_perm.shape)):
        t_perm = t_perm[:, :0]  # identity: the stacked output is already in extended-input order
    return tuple(t_row), tuple(t_weight), t_perm.astype(np.int32)


def _group_cols(index: np.ndarray, piece_rows: int, n_ext: int) -> np.ndarray:
    """``[P, G, width]``: the shared input rows of every ``piece_rows``-row slot of a grouped bucket.

    Every real row of a slot reads the same inputs in the same slot order, so the slot's first
    real row gives them; empty slots get the sentinel ``n_ext``.
    """
    P, rows, width = index.shape
    if piece_rows == 0:
        return np.zeros((P, 0, width), dtype=np.int32)
    slots = index.reshape(P, rows // piece_rows, piece_rows, width)
    real = (slots < n_ext).any(axis=3)  # [P, G, R]
    first = np.argmax(real, axis=2)
    cols = np.take_along_axis(slots, first[:, :, None, None], axis=2)[:, :, 0, :]
    return np.where(real.any(axis=2)[:, :, None], cols, n_ext).astype(np.int32)


def build_plan(network: SparseNetwork, partition, max_buckets: int = 6) -> Plan:
    """Builds the communication plan of ``network`` under ``partition``.

    Args:
        network: the network.
        partition: a :class:`jaxsdnn.partition.Partition` (validated against the network's
            fingerprint) or a sequence of ``L+1`` int arrays, ``parts[k][i]`` = device owning
            neuron ``i`` of layer ``k``.
        max_buckets: most row-length buckets per layer.

    Returns:
        the :class:`Plan`; ``plan.needed_volume()`` equals the partition's connectivity-1 volume.
    """
    parts, P = _parts_of(partition, network)
    L = network.num_layers
    sizes = network.sizes

    # layer 0: inputs, one bucket, rows by id
    ids0, pos_prev, _, _ = _local_layout(parts[0], np.zeros(sizes[0], dtype=np.int64), P, 1)
    local_ids, rounds_all, tables, edge_slots, volumes, widths_all = [ids0], [], [], [], [], []
    n_prev = ids0.shape[1]

    for k in range(1, L + 1):
        w = network.weights[k - 1].tocoo()
        src, dst = w.row.astype(np.int64), w.col.astype(np.int64)  # CSR order
        p_src, p_dst = parts[k - 1][src], parts[k][dst]

        # -- what crosses devices: unique (entry, destination device) pairs ------------------
        remote = p_src != p_dst
        need = np.unique(p_dst[remote] * sizes[k - 1] + src[remote])  # sorted by (dst device, entry)
        need_dev, need_entry = need // sizes[k - 1], need % sizes[k - 1]
        need_src = parts[k - 1][need_entry]
        volume = np.zeros((P, P), dtype=np.int64)
        np.add.at(volume, (need_src, need_dev), 1)
        rounds = schedule_rounds(volume)
        round_of = np.full((P, P), -1, dtype=np.int64)
        for r, pairs in enumerate(rounds):
            for p, q in pairs:
                round_of[p, q] = r
        m = np.array([max(volume[p, q] for p, q in pairs) for pairs in rounds], dtype=np.int64)
        recv_off = n_prev + np.concatenate([[0], np.cumsum(m)])
        n_ext = int(recv_off[-1])

        # message order: (src device, dst device, entry); rank within message
        morder = np.lexsort((need_entry, need_dev, need_src))
        ms, md, me = need_src[morder], need_dev[morder], need_entry[morder]
        mkey = ms * P + md
        mrank = np.arange(me.size) - np.searchsorted(mkey, mkey, side="left")
        mround = round_of[ms, md]
        send = []
        for r in range(len(rounds)):
            sel = mround == r
            table = np.full((P, int(m[r])), n_prev, dtype=np.int64)
            table[ms[sel], mrank[sel]] = pos_prev[me[sel]]
            send.append(table.astype(np.int32))
        # where a received entry lands on its destination: ext position, keyed by (dst, entry)
        recv_key = md * sizes[k - 1] + me
        recv_pos = recv_off[mround] + mrank
        rk_order = np.argsort(recv_key)
        recv_key, recv_pos = recv_key[rk_order], recv_pos[rk_order]

        # fold table: local row -> positions of its returned partial sums in concat(rounds)
        G = int(m.sum())
        gpos = np.concatenate([[0], np.cumsum(m)])[mround] + mrank
        fold_row = pos_prev[me]
        forder = np.lexsort((gpos, fold_row, ms))
        f_dev, f_row, f_g = ms[forder], fold_row[forder], gpos[forder]
        fkey = f_dev * n_prev + f_row
        frank = np.arange(f_g.size) - np.searchsorted(fkey, fkey, side="left")
        F = int(frank.max()) + 1 if frank.size else 0
        fold = np.full((P, n_prev, F), G, dtype=np.int64)
        fold[f_dev, f_row, frank] = f_g

        # -- forward buckets of the neurons of layer k ----------------------------------------
        fan_in = np.bincount(dst, minlength=sizes[k])
        widths = choose_bucket_widths(fan_in, max_buckets=max_buckets)
        bucket = np.searchsorted(widths, fan_in, side="left")
        group = network.input_classes(k)
        piece_rows = np.where(widths > 0, _piece_rows(parts[k], bucket, group, fan_in > 0, P, widths.size), 0)
        ids, pos, rows_b, offsets = _local_layout(parts[k], bucket, P, widths.size, group, piece_rows)
        n_rows = int(offsets[-1])

        ext = np.where(remote, -1, pos_prev[src])
        rem = np.flatnonzero(remote)
        look = np.searchsorted(recv_key, p_dst[rem] * sizes[k - 1] + src[rem])
        ext[rem] = recv_pos[look]
        # slot of each edge within its output row (edges sorted by dst, then src)
        eorder = np.lexsort((src, dst))
        slot = np.empty(dst.size, dtype=np.int64)
        sd = dst[eorder]
        slot[eorder] = np.arange(sd.size) - np.searchsorted(sd, sd, side="left")
        e_bucket = bucket[dst]
        e_row = pos[dst] - offsets[e_bucket]
        index = []
        sizes_b = rows_b * widths  # per device flat size of each bucket
        dev_off = np.concatenate([[0], np.cumsum(sizes_b)])  # per-device flat offsets
        glob_off = np.concatenate([[0], np.cumsum(P * sizes_b)])  # [P, ...]-raveled offsets
        for b in range(widths.size):
            table = np.full((P, int(rows_b[b]), int(widths[b])), n_ext, dtype=np.int64)
            sel = e_bucket == b
            table[p_dst[sel], e_row[sel], slot[sel]] = ext[sel]
            index.append(table.astype(np.int32))
        edge_slot = glob_off[e_bucket] + (p_dst * rows_b[e_bucket] + e_row) * widths[e_bucket] + slot
        wpos = dev_off[e_bucket] + e_row * widths[e_bucket] + slot  # within the device
        t_row, t_weight, t_perm = _transposed_tables(
            p_dst, ext, pos[dst], wpos, n_ext, n_rows, int(dev_off[-1]), P
        )

        local_ids.append(ids)
        rounds_all.append(tuple(tuple(pairs) for pairs in rounds))
        tables.append(
            LayerTables(
                tuple(index), tuple(send), t_row, t_weight, t_perm, fold.astype(np.int32),
                tuple(_group_cols(idx, int(r), n_ext) for idx, r in zip(index, piece_rows)),
            )
        )
        edge_slots.append(edge_slot)
        volumes.append(volume)
        widths_all.append(widths)
        pos_prev, n_prev = pos, n_rows

    return Plan(
        num_parts=P,
        sizes=sizes,
        cap=network.cap,
        fingerprint=network.fingerprint(),
        local_ids=tuple(local_ids),
        rounds=tuple(rounds_all),
        tables=tuple(tables),
        edge_slot=tuple(edge_slots),
        volume=tuple(volumes),
        widths=tuple(widths_all),
    )


# ----------------------------------------------------------------------------------------------
# values in and out of the plan's layout (host side)
# ----------------------------------------------------------------------------------------------
def layout_values(plan: Plan, network: SparseNetwork) -> dict:
    """The network's weights and biases in the plan's layout (NumPy, float32).

    Returns:
        ``{"w": per layer a tuple of [P, rows_b, width_b] buckets (0 at padding),
        "b": per layer [P, n_local[k]] (0 at padding rows)}``.
    """
    if network.fingerprint() != plan.fingerprint:
        raise ValueError("this network's structure differs from the one the plan was built for")
    ws, bs = [], []
    for k in range(1, plan.num_layers + 1):
        shapes = [t.shape for t in plan.tables[k - 1].index]
        flat = np.zeros(sum(int(np.prod(s)) for s in shapes), dtype=np.float32)
        flat[plan.edge_slot[k - 1]] = network.weights[k - 1].data
        out, off = [], 0
        for s in shapes:
            size = int(np.prod(s))
            out.append(flat[off : off + size].reshape(s))
            off += size
        ws.append(tuple(out))
        bs.append(_to_local(plan, k, network.biases[k - 1][:, None])[..., 0])
    return {"w": tuple(ws), "b": tuple(bs)}


def values_to_network(plan: Plan, network: SparseNetwork, params) -> SparseNetwork:
    """Inverse of :func:`layout_values`: a network with ``network``'s structure and ``params``' values."""
    data, biases = [], []
    for k in range(1, plan.num_layers + 1):
        flat = np.concatenate([np.asarray(w).ravel() for w in params["w"][k - 1]])
        data.append(flat[plan.edge_slot[k - 1]])
        biases.append(_from_local(plan, k, np.asarray(params["b"][k - 1])[..., None])[:, 0])
    return network.with_values(data, biases)


def _to_local(plan: Plan, k: int, x: np.ndarray) -> np.ndarray:
    """``[n_k, ...]`` global rows -> ``[P, n_local[k], ...]`` (zeros at padding)."""
    ids = plan.local_ids[k]
    out = np.zeros(ids.shape + x.shape[1:], dtype=x.dtype)
    valid = ids >= 0
    out[valid] = x[ids[valid]]
    return out


def _from_local(plan: Plan, k: int, x: np.ndarray) -> np.ndarray:
    """``[P, n_local[k], ...]`` -> ``[n_k, ...]`` global rows (padding dropped)."""
    ids = plan.local_ids[k]
    out = np.zeros((plan.sizes[k],) + x.shape[2:], dtype=x.dtype)
    valid = ids >= 0
    out[ids[valid]] = x[valid]
    return out


def inputs_to_local(plan: Plan, x) -> np.ndarray:
    """Input batch ``[batch, n_0]`` (dense or scipy.sparse) -> feature-major ``[P, n_local[0], batch]``."""
    xt = x.T.toarray() if hasattr(x, "toarray") else np.asarray(x).T
    if xt.shape[0] != plan.sizes[0]:
        raise ValueError(f"inputs have {xt.shape[0]} features, the network expects {plan.sizes[0]}")
    return _to_local(plan, 0, np.ascontiguousarray(xt, dtype=np.float32))


def outputs_from_local(plan: Plan, y: np.ndarray, k: int | None = None) -> np.ndarray:
    """``[P, n_local[k], batch]`` -> ``[batch, n_k]`` (``k`` defaults to the last layer)."""
    k = plan.num_layers if k is None else k
    return _from_local(plan, k, np.asarray(y)).T


def parts_single_device(network: SparseNetwork) -> list[np.ndarray]:
    """The trivial partition: every neuron on device 0."""
    return [np.zeros(n, dtype=np.int64) for n in network.sizes]
