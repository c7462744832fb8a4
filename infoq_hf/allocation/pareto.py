"""Trade-off curves: one optimal allocation per budget, and a plot of sensitivity against size."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..policy import BitPolicy, Budget
from ..sensitivity.table import SensitivityTable
from .allocate import allocate
from .diagnose import InfeasibleBudgetError

logger = logging.getLogger(__name__)


def pareto_sweep(
    table: SensitivityTable,
    budgets: Iterable[Budget | Mapping],
    *,
    skip_infeasible: bool = True,
    **allocate_kwargs,
) -> list[BitPolicy]:
    """`allocate` once per budget (in the order given). Budgets that cannot be met are skipped with a
    log line (the tight end of a sweep often is), or raise with `skip_infeasible=False`."""
    policies = []
    for budget in budgets:
        try:
            policies.append(allocate(table, budget, **allocate_kwargs))
        except InfeasibleBudgetError as e:
            if not skip_infeasible:
                raise
            logger.info("pareto_sweep: skipping budget %s: %s", budget, e)
    return policies


def plot_pareto(
    policies: list[BitPolicy], path: str | Path, chosen: BitPolicy | int | None = None, title: str | None = None
) -> Path:
    """Write a PNG of total sensitivity vs model size (MB) for allocated policies; mark `chosen`
    (a policy of the list or its index)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    if not policies:
        raise ValueError("plot_pareto needs at least one allocated policy")
    reports = []
    for i, p in enumerate(policies):
        if getattr(p, "report", None) is None:
            raise ValueError(f"policy {i} has no allocation report; pass policies returned by allocate/pareto_sweep")
        reports.append(p.report)
    if isinstance(chosen, BitPolicy):
        hits = [i for i, p in enumerate(policies) if p is chosen] or [i for i, p in enumerate(policies) if p == chosen]
        if not hits:
            raise ValueError("the chosen policy is not among the plotted policies")
        chosen = hits[0]
    if chosen is not None and not (isinstance(chosen, int) and -len(policies) <= chosen < len(policies)):
        raise ValueError(f"chosen must be a policy of the list or an index below {len(policies)}, got {chosen!r}")

    points = sorted((r.size_bytes / 1e6, r.objective) for r in reports)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    try:
        ax.plot(
            [p[0] for p in points], [p[1] for p in points], "o-", color="tab:blue", ms=4, label="optimal allocations"
        )
        if chosen is not None:
            r = reports[chosen]
            ax.plot(
                r.size_bytes / 1e6,
                r.objective,
                "*",
                color="tab:red",
                ms=14,
                zorder=3,
                label=f"chosen: {r.avg_bits:.2f} avg bits, {r.size_bytes / 1e6:.2f} MB",
            )
        ax.set_xlabel("model size (MB)")
        ax.set_ylabel("total sensitivity (lower is better)")
        ax.set_title(title or "InfoQ allocation: sensitivity vs size")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
