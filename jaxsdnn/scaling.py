"""A latency / bandwidth / compute model of neuron-partitioned inference, for projecting scaling.

Host-only NumPy: it reads what a partition measurably costs (per-device loads and per-device
traffic from the communication matrices) and turns it into a projected time per layer on a
machine described by four numbers (:class:`Machine`). Nothing runs on a device.

Per layer ``k``, with ``B`` samples in the batch and every device stepping through the layer's
exchange rounds together, then computing (no overlap of the two)::

    compute_k  = max_p load[k, p] * B / compute_rate
    exchange_k = max_p ( rounds[k, p] * latency + max(send[k, p], recv[k, p]) * B * bytes / bandwidth )
    time_k     = compute_k + exchange_k

``load[k, p]`` is the number of stored edges (multiply-adds per sample) of the layer-``k`` neurons
that device ``p`` owns; ``send`` / ``recv`` are the activation entries per sample that ``p`` sends /
receives before layer ``k`` (row / column sums of :func:`jaxsdnn.metrics.communication_matrix`).
``rounds[k, p]`` counts message start-ups: the ``ppermute`` rounds of the plan (the same for
every device, see :func:`jaxsdnn.plan.schedule_rounds`), or, where no plan was built, the number
of partners of ``p``, ``max(out-degree, in-degree)`` in the communication graph. The largest such
degree is also the fewest rounds any schedule can have (a bipartite graph's edges can be coloured
with as many colours as its largest degree, König), the plan schedules exactly that many.
A device sends and receives at the same time on one link of ``bandwidth`` bytes/s each way.

The single-device time is the same formula with ``P = 1`` (no exchange); the speed-up at ``P``
is ``sum_k time_k(1) / sum_k time_k(P)``.

References:
    Hockney, "The communication challenge for MPP", Parallel Computing 1994 (the
    latency-bandwidth model). Demirci and Ferhatosmanoglu, "Partitioning sparse deep neural
    networks for scalable training and inference", ICS 2021.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxsdnn.metrics import communication_matrix
from jaxsdnn.network import SparseNetwork
from jaxsdnn.plan import schedule_rounds

__all__ = ["LayerCosts", "Machine", "layer_costs", "partner_counts", "projected_times", "speedup"]


@dataclasses.dataclass(frozen=True)
class Machine:
    """The machine the projection assumes (defaults: an assumed GPU cluster, not a measurement).

    Attributes:
        compute_rate: stored edges (multiply-adds) per second one device sustains in the sparse
            gather kernel, per sample (default 2e11).
        latency: seconds to start one message / one ``ppermute`` round (default 10 us).
        bandwidth: bytes per second of one device's link, each direction (default 25 GB/s).
        bytes_per_entry: bytes of one activation entry (default 4, float32).
        batch: samples per forward pass (default 60000, the Graph Challenge image count).
    """

    compute_rate: float = 2e11
    latency: float = 10e-6
    bandwidth: float = 25e9
    bytes_per_entry: int = 4
    batch: int = 60000

    def __post_init__(self):
        for name in ("compute_rate", "bandwidth", "bytes_per_entry", "batch"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Machine.{name}={getattr(self, name)} must be > 0")
        if not self.latency >= 0:
            raise ValueError(f"Machine.latency={self.latency} must be >= 0")


@dataclasses.dataclass(frozen=True)
class LayerCosts:
    """What a partition costs, layer by layer (all per sample; ``L`` layers, ``P`` devices).

    Attributes:
        load: ``[L, P]`` stored edges of layer ``k + 1`` owned by each device.
        send: ``[L, P]`` activation entries each device sends before layer ``k + 1``.
        recv: ``[L, P]`` entries each device receives before layer ``k + 1``.
        rounds: ``[L, P]`` message start-ups each device waits for before layer ``k + 1``.
    """

    load: np.ndarray
    send: np.ndarray
    recv: np.ndarray
    rounds: np.ndarray

    def __post_init__(self):
        arrays = {}
        for name in ("load", "send", "recv", "rounds"):
            a = np.asarray(getattr(self, name), dtype=np.float64)
            if a.ndim == 1:
                a = a[:, None]
            arrays[name] = a
        shape = arrays["load"].shape
        if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
            raise ValueError(f"LayerCosts: load must be [L, P] with L, P >= 1, got {shape}")
        for name, a in arrays.items():
            if name == "rounds" and a.shape[1] == 1 and a.shape[0] == shape[0]:
                a = np.broadcast_to(a, shape)  # one round count per layer, the same on every device
            if a.shape != shape:
                raise ValueError(f"LayerCosts: {name}.shape={a.shape} does not match load.shape={shape}")
            if (a < 0).any():
                raise ValueError(f"LayerCosts: {name} has negative entries")
            object.__setattr__(self, name, a)

    @property
    def num_layers(self) -> int:
        return int(self.load.shape[0])

    @property
    def num_parts(self) -> int:
        return int(self.load.shape[1])


def partner_counts(volume: np.ndarray) -> np.ndarray:
    """``[P]`` messages each device takes part in: ``max(partners it sends to, partners it hears)``.

    Args:
        volume: ``[P, P]`` entries device ``p`` sends to device ``q`` (diagonal ignored).
    """
    talk = np.asarray(volume) > 0
    np.fill_diagonal(talk, False)
    return np.maximum(talk.sum(axis=1), talk.sum(axis=0)).astype(np.int64)


def layer_costs(network: SparseNetwork, partition, rounds="partners") -> LayerCosts:
    """Measures the per-device loads and traffic of ``partition`` on ``network``.

    Args:
        network: the network.
        partition: a :class:`jaxsdnn.partition.Partition` made for ``network``.
        rounds: how message start-ups are counted: ``"partners"``, each device's partners
            (:func:`partner_counts`); ``"plan"``, the ``ppermute`` rounds that
            :func:`jaxsdnn.plan.build_plan` schedules (the same
            :func:`~jaxsdnn.plan.schedule_rounds` on the same matrix, without the index tables;
            under a second per layer at ``P = 1024``); or ``[L]`` given counts.

    Returns:
        the :class:`LayerCosts`.
    """
    partition.validate_for(network)
    L, P = network.num_layers, partition.num_parts
    load = np.zeros((L, P), np.int64)
    send = np.zeros((L, P), np.int64)
    recv = np.zeros((L, P), np.int64)
    partners = np.zeros((L, P), np.int64)
    planned = np.zeros(L, np.int64)
    mode = rounds if isinstance(rounds, str) else "given"
    if mode not in ("partners", "plan", "given"):
        raise ValueError(f"rounds={rounds!r} must be 'partners', 'plan' or [L] counts")
    for k in range(1, L + 1):
        load[k - 1] = np.bincount(partition.parts[k], weights=network.fan_in(k), minlength=P).astype(np.int64)
        m = communication_matrix(network, partition, k)
        send[k - 1], recv[k - 1] = m.sum(axis=1), m.sum(axis=0)
        partners[k - 1] = partner_counts(m)
        if mode == "plan":
            planned[k - 1] = len(schedule_rounds(m))
    if mode == "partners":
        counts = partners
    elif mode == "plan":
        counts = planned
    else:
        counts = np.asarray(rounds, np.int64)
        if counts.shape != (L,):
            raise ValueError(f"rounds.shape={counts.shape} must be ({L},), one count per layer")
    return LayerCosts(load=load, send=send, recv=recv, rounds=counts)


def projected_times(costs: LayerCosts, machine: Machine = Machine()) -> dict:
    """Projected seconds of every layer under the model of this module.

    Args:
        costs: measured :class:`LayerCosts` (``L`` layers, ``P`` devices).
        machine: the assumed :class:`Machine`.

    Returns:
        ``{"compute", "latency", "transfer", "exchange", "total"}``, each ``[L]`` float64 seconds;
        ``exchange`` is the slowest device's ``latency + transfer`` (so ``latency`` and
        ``transfer`` are that device's terms), ``total = compute + exchange``.
    """
    B = float(machine.batch)
    compute = costs.load.max(axis=1) * B / machine.compute_rate
    start = costs.rounds * machine.latency
    move = np.maximum(costs.send, costs.recv) * B * machine.bytes_per_entry / machine.bandwidth
    per_device = start + move
    worst = np.argmax(per_device, axis=1)
    rows = np.arange(costs.num_layers)
    exchange = per_device[rows, worst]
    return {
        "compute": compute,
        "latency": start[rows, worst],
        "transfer": move[rows, worst],
        "exchange": exchange,
        "total": compute + exchange,
    }


def speedup(costs: LayerCosts, machine: Machine = Machine()) -> float:
    """``T(1) / T(P)``: the single device runs all edges with no exchange, at the same rate."""
    single = costs.load.sum(axis=1) * float(machine.batch) / machine.compute_rate
    return float(single.sum() / projected_times(costs, machine)["total"].sum())
