"""Figures: communication volume per layer, training curves (PNG, matplotlib's Agg canvas).

Pure functions: data and an output path in, a PNG out (written atomically), nothing else touched.
matplotlib is imported inside each function, so ``import jaxsdnn`` does not load it, and no
pyplot state or global backend is used (a ``Figure`` on its own ``FigureCanvasAgg``), so the
functions are safe to call from scripts, tests and threads alike.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jaxsdnn._atomic import atomic_write

__all__ = ["plot_layer_volume", "plot_training_curve"]

_DPI = 110
_LINESTYLES = ("-", "--", "-.", ":")  # series that coincide (block, random) stay visible


def _figure(width: float, height: float):
    """A standalone matplotlib ``Figure`` on an Agg canvas (no pyplot, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: expected a .png file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    return path


def _as_1d(values, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence, got shape {a.shape}")
    return a


def plot_layer_volume(
    per_layer_volume: Mapping[str, Sequence[float]],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    log: bool = True,
) -> Path:
    """One line per partition: the entries sent before each layer, per input sample.

    Args:
        per_layer_volume: method name -> ``[L]`` volume before layers ``1..L`` (e.g.
            ``partition_metrics(...)["per_layer_volume"]``); every sequence has the same ``L``.
        path: the ``.png`` to write (parent directories are created).
        title: the figure title (default: "Communication volume per layer").
        log: logarithmic y axis (``symlog`` with a linear part below 1 when a layer sends nothing).

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: no series, a series that is not 1-D or empty, or series of different lengths.
    """
    if not per_layer_volume:
        raise ValueError("per_layer_volume: no series to plot")
    series = {str(name): _as_1d(v, f"per_layer_volume[{name!r}]") for name, v in per_layer_volume.items()}
    lengths = {name: v.size for name, v in series.items()}
    if len(set(lengths.values())) != 1 or 0 in lengths.values():
        raise ValueError(f"per_layer_volume: every series needs the same number (> 0) of layers, got {lengths}")
    fig = _figure(8.0, 4.5)
    ax = fig.add_subplot()
    for i, (name, v) in enumerate(series.items()):
        layers = np.arange(1, v.size + 1)
        ax.plot(layers, v, linestyle=_LINESTYLES[i % len(_LINESTYLES)], marker="." if v.size <= 40 else None,
                linewidth=1.2, label=f"{name} (total {int(round(v.sum())):,})")
    if log:
        if min(float(v.min()) for v in series.values()) > 0:
            ax.set_yscale("log")
        else:
            ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("layer k (volume sent before computing it)")
    ax.set_ylabel("entries per sample")
    ax.set_title(title or "Communication volume per layer")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_training_curve(
    steps: Sequence[float],
    loss: Sequence[float],
    epochs: Sequence[float],
    accuracy: Sequence[float],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    accuracy_label: str = "eval accuracy",
) -> Path:
    """Training loss per logged step (left) and evaluation accuracy per epoch (right).

    Args:
        steps: ``[n]`` optimizer steps at which ``loss`` was logged.
        loss: ``[n]`` training loss (e.g. the mean over the steps since the previous log line).
        epochs: ``[m]`` epoch numbers (1-based) of the ``accuracy`` values; may be empty.
        accuracy: ``[m]`` accuracy in ``[0, 1]`` after each of those epochs.
        path: the ``.png`` to write (parent directories are created).
        title: the figure title (default: "Training").
        accuracy_label: the y label of the right panel.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: no loss values, or ``steps``/``loss`` or ``epochs``/``accuracy`` of
            different lengths.
    """
    steps, loss = _as_1d(steps, "steps"), _as_1d(loss, "loss")
    epochs, accuracy = _as_1d(epochs, "epochs"), _as_1d(accuracy, "accuracy")
    if steps.size != loss.size or steps.size == 0:
        raise ValueError(f"steps and loss need the same length > 0, got {steps.size=} {loss.size=}")
    if epochs.size != accuracy.size:
        raise ValueError(f"epochs and accuracy need the same length, got {epochs.size=} {accuracy.size=}")
    fig = _figure(9.0, 3.8)
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(steps, loss, linewidth=1.2)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss")
    if loss.min() > 0 and loss.max() / loss.min() > 20:
        ax_loss.set_yscale("log")
    ax_loss.grid(True, alpha=0.3)
    if epochs.size:
        ax_acc.plot(epochs, accuracy, marker="o", linewidth=1.2)
        ax_acc.annotate(f"{accuracy[-1]:.3f}", (epochs[-1], accuracy[-1]), textcoords="offset points",
                        xytext=(-6, -14), ha="right", fontsize="small")
    else:
        ax_acc.text(0.5, 0.5, "no evaluation yet", ha="center", va="center", transform=ax_acc.transAxes)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel(accuracy_label)
    ax_acc.set_ylim(0.0, 1.02)
    ax_acc.grid(True, alpha=0.3)
    fig.suptitle(title or "Training")
    return _save(fig, path)
