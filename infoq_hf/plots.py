"""PNG figures for reports and model cards: bits per layer, a layer x bits sensitivity heatmap,
and the sensitivity-vs-size Pareto curve with the chosen allocation marked.

Every function writes one file and returns its path; matplotlib runs headless (Agg) and each
figure is closed after saving, so the functions are safe in scripts and tests.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

from .accounting import mean_weight_bits
from .allocation import AllocationReport, pareto_sweep, plot_pareto
from .allocation.costs import objective, totals
from .policy import BitPolicy, Budget
from .sensitivity.table import SensitivityTable

MAX_LABELLED_LAYERS = 60  # beyond this, layer names on an axis become unreadable: show indices


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def fit_title(fig, ax, text: str, fontsize: float = 10) -> None:
    """Set `ax`'s title, wrapped onto more lines until it lies inside the laid-out figure (a narrow
    heatmap with a colorbar would otherwise cut a long title off at both sides)."""
    renderer = fig.canvas.get_renderer()
    width = len(text)
    while True:
        ax.set_title("\n".join(textwrap.wrap(text, width)), fontsize=fontsize)
        fig.tight_layout()  # the layout _save uses: the title is centred over the axes it leaves
        extent = ax.title.get_window_extent(renderer)
        if (extent.x0 >= 0 and extent.x1 <= fig.bbox.width) or width <= 12:
            return
        width = int(width * 0.8)


def _as_policy(policy) -> BitPolicy:
    return policy if isinstance(policy, BitPolicy) else BitPolicy.from_dict(policy)


def _short(name: str, width: int = 40) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def plot_bits_per_layer(
    policy: BitPolicy | Mapping, path: str | Path, params: Mapping[str, int] | None = None, title: str | None = None
) -> Path:
    """Bar chart of each layer's weight bits, in model order; bar colour = bits. With `params`
    (layer -> parameter count) the title also gives the parameter-weighted average."""
    plt = _pyplot()
    policy = _as_policy(policy)
    if not len(policy):
        raise ValueError("plot_bits_per_layer needs a policy with at least one layer")
    names = list(policy)
    bits = [policy[n].w_bits for n in names]
    cmap = plt.get_cmap("viridis")
    colours = [cmap((b - 2) / 6) for b in bits]
    fig, ax = plt.subplots(figsize=(max(6, min(0.18 * len(names) + 2, 18)), 3.6), dpi=120)
    ax.bar(range(len(names)), bits, color=colours, width=0.85)
    if len(names) <= MAX_LABELLED_LAYERS:
        ax.set_xticks(range(len(names)), [_short(n) for n in names], rotation=90, fontsize=6)
    else:
        ax.set_xlabel("layer index (model order)")
    ax.set_ylabel("weight bits")
    ax.set_ylim(0, 8.5)
    ax.set_yticks(sorted(set(bits) | {8}))
    ax.grid(axis="y", alpha=0.3)
    if title is None:
        title = f"bits per layer ({len(names)} layers"
        known = [n for n in names if params and n in params]
        if known:
            title += f", average {mean_weight_bits(params, {n: policy[n].w_bits for n in known}):.2f} bits"
        title += ")"
    ax.set_title(title)
    return _save(fig, path)


def plot_sensitivity_heatmap(
    table: SensitivityTable, path: str | Path, policy: BitPolicy | Mapping | None = None, title: str | None = None
) -> Path:
    """Heatmap of weight sensitivity (log10, lower is better) with layers as rows and candidate bits as
    columns; the chosen bits of `policy` are outlined."""
    plt = _pyplot()
    import numpy as np

    names = list(table.layers)
    if not names:
        raise ValueError("plot_sensitivity_heatmap needs a table with at least one layer")
    bits = table.bits
    values = np.array([[table.layers[n]["w"].get(b, math.nan) for b in bits] for n in names], dtype=float)
    positive = values[np.isfinite(values) & (values > 0)]
    floor = positive.min() / 10 if positive.size else 1e-12
    shown = np.log10(np.where(np.isfinite(values), np.maximum(values, floor), np.nan))

    fig, ax = plt.subplots(figsize=(2.2 + 0.7 * len(bits), max(3.0, min(0.16 * len(names) + 1.5, 20))), dpi=120)
    image = ax.imshow(shown, aspect="auto", cmap="magma_r", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="log10 sensitivity (lower = less sensitive)")
    ax.set_xticks(range(len(bits)), [str(b) for b in bits])
    ax.set_xlabel("weight bits")
    if len(names) <= MAX_LABELLED_LAYERS:
        ax.set_yticks(range(len(names)), [_short(n) for n in names], fontsize=6)
    else:
        ax.set_ylabel("layer index (model order)")
    if policy is not None:
        chosen = _match_policy(_as_policy(policy), names)
        for row, name in enumerate(names):
            if name in chosen and chosen[name] in bits:
                col = bits.index(chosen[name])
                ax.add_patch(plt.Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="tab:cyan", lw=1.5))
    fit_title(
        fig,
        ax,
        title
        or f"{table.method} sensitivity per layer and bit-width"
        + (" (outlined: chosen)" if policy is not None else ""),
    )
    return _save(fig, path)


def _match_policy(policy: BitPolicy, names: Sequence[str]) -> dict[str, int]:
    """Table layer -> chosen weight bits, matching names as policies do (exact, dot-suffix, regex)."""
    try:
        return {n: lb.w_bits for n, lb in policy.resolve(names).items()}
    except ValueError:  # a policy for a differently named model: match what matches exactly
        return {n: policy[n].w_bits for n in names if n in policy}


def chosen_report(table: SensitivityTable, policy: BitPolicy | Mapping):
    """An `AllocationReport` for a policy that was not allocated here (e.g. read back from a checkpoint):
    its size, BitOps, average bits, compression and objective computed from `table`. None when the
    policy does not cover every layer of the table (its totals would not be comparable)."""
    policy = _as_policy(policy)
    try:
        resolved = policy.resolve(list(table.layers))
    except ValueError:
        return None
    if set(resolved) != set(table.layers) or any(lb.w_bits not in table.bits for lb in resolved.values()):
        return None
    assignment = {n: (lb.w_bits, lb.a_bits) for n, lb in resolved.items()}
    t = totals(table, assignment)
    return AllocationReport(
        objective=objective(table, assignment, 1.0, False),
        size_bytes=t.size_bytes,
        bitops=t.bitops,
        avg_bits=t.avg_bits,
        compression=t.compression,
        solver="given",
        solve_time_s=0.0,
        mip_gap=0.0,
        status="given",
        budget=Budget(avg_bits=t.avg_bits),
    )


def plot_pareto_curve(
    table: SensitivityTable,
    path: str | Path,
    chosen: BitPolicy | Mapping | None = None,
    *,
    points: int = 12,
    title: str | None = None,
    **allocate_kwargs,
) -> Path:
    """Total sensitivity vs model size: one optimal allocation per average-bits budget from the smallest
    to the largest candidate width (`allocation.pareto_sweep`), drawn by `allocation.plot_pareto`, with
    the `chosen` policy marked (its cost computed from the table when it carries no report)."""
    if points < 2:
        raise ValueError(f"plot_pareto_curve needs points >= 2, got {points}")
    low, high = min(table.bits), max(table.bits)
    budgets = [Budget(avg_bits=low + (high - low) * i / (points - 1)) for i in range(points)]
    policies = pareto_sweep(table, budgets, **allocate_kwargs)
    marked = None
    if chosen is not None:
        chosen = _as_policy(chosen)
        report = getattr(chosen, "report", None)
        if report is None or getattr(report, "size_bytes", None) is None:
            report = chosen_report(table, chosen)
        if report is not None:
            marked = BitPolicy(chosen.to_dict(), report=report)
            policies.append(marked)
    if not policies:
        raise ValueError("no budget of the sweep could be met; the table cannot be plotted as a Pareto curve")
    return plot_pareto(policies, path, chosen=marked, title=title)


__all__ = ["chosen_report", "plot_bits_per_layer", "plot_pareto_curve", "plot_sensitivity_heatmap"]
