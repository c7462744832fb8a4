"""Solver backends (Gurobi, HiGHS) behind one call: `solve(mip, solver=...) -> Solution`.

The model arrives in a solver-neutral form (`MIP`: binary variables, a cost
vector, sparse rows with bounds) so the formulation in `ilp.py` never sees a
solver API. `solver="auto"` tries Gurobi and falls back to HiGHS when gurobipy is
missing, its license is refused, or the model exceeds the size-limited license
that ships with the pip wheel (about 2000 variables / constraints); that fallback
logs one warning per process. Both solve to proven optimality by default
(relative and absolute MIP gap 0).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

SOLVERS = ("auto", "gurobi", "highs")

# gurobipy error numbers (GRB.Error) that mean "this license cannot solve this", not "the model is wrong".
_GRB_NO_LICENSE = 10009
_GRB_SIZE_LIMIT = 10010
_GRB_LICENSE_ERRORS = {_GRB_NO_LICENSE, _GRB_SIZE_LIMIT, 10022, 10023, 10028}  # + network/token server/cloud

_GUROBI_FIX = (
    "Get an unrestricted license (free for academics: run `grbgetkey <key>` from "
    "https://www.gurobi.com/academia/), or pass solver='highs'."
)


class SolverUnavailableError(RuntimeError):
    """The requested solver cannot run here (not installed, or its license refuses the model)."""


@dataclass
class MIP:
    """min cost @ x  s.t.  row_lower <= A x <= row_upper,  x binary. A is stored row-wise (CSR)."""

    cost: np.ndarray
    row_start: np.ndarray
    row_index: np.ndarray
    row_value: np.ndarray
    row_lower: np.ndarray
    row_upper: np.ndarray

    @property
    def num_vars(self) -> int:
        return len(self.cost)

    @property
    def num_rows(self) -> int:
        return len(self.row_lower)


class MIPBuilder:
    """Collects rows one at a time and freezes them into a `MIP`."""

    def __init__(self, cost):
        self.cost = np.asarray(cost, dtype=np.float64)
        self._index: list[np.ndarray] = []
        self._value: list[np.ndarray] = []
        self._lower: list[float] = []
        self._upper: list[float] = []

    def add_row(self, index, value, lower: float, upper: float) -> None:
        self._index.append(np.asarray(index, dtype=np.int32))
        self._value.append(np.asarray(value, dtype=np.float64))
        self._lower.append(float(lower))
        self._upper.append(float(upper))

    def build(self) -> MIP:
        lengths = [len(i) for i in self._index]
        start = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=start[1:])
        cat = (lambda parts, dt: np.concatenate(parts).astype(dt)) if lengths else (lambda parts, dt: np.zeros(0, dt))
        return MIP(
            cost=self.cost,
            row_start=start,
            row_index=cat(self._index, np.int32),
            row_value=cat(self._value, np.float64),
            row_lower=np.array(self._lower, dtype=np.float64),
            row_upper=np.array(self._upper, dtype=np.float64),
        )


@dataclass
class Solution:
    """status: "optimal", "time_limit" (x is the best found) or "infeasible" (x is None)."""

    status: str
    solver: str
    solve_time_s: float
    x: np.ndarray | None = None
    objective: float | None = None
    mip_gap: float = math.nan
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- entry


def solve(
    mip: MIP,
    solver: str = "auto",
    *,
    time_limit: float | None = None,
    verbose: bool = False,
    start: np.ndarray | None = None,
) -> Solution:
    """Solve `mip` with the named backend ("auto": Gurobi when it can, else HiGHS).
    `start`: an optional feasible 0/1 vector the solver may begin from (speed only)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {list(SOLVERS)}")
    if time_limit is not None and not (isinstance(time_limit, (int, float)) and time_limit > 0):
        raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    if solver == "highs":
        return _solve_highs(mip, time_limit, verbose, start)
    if solver == "gurobi":
        try:
            return _solve_gurobi(mip, time_limit, verbose, start)
        except _GurobiUnusable as e:
            raise SolverUnavailableError(f"solver='gurobi' cannot solve this model: {e}. {_GUROBI_FIX}") from None
    # auto
    if not _GUROBI.known_unusable(mip):
        try:
            return _solve_gurobi(mip, time_limit, verbose, start)
        except _GurobiUnusable as e:
            _GUROBI.remember(mip, e)
            if e.quiet:
                logger.debug("Gurobi unavailable (%s); using HiGHS", e)
            else:
                _GUROBI.warn_once(f"Gurobi cannot solve this model ({e}); falling back to HiGHS. {_GUROBI_FIX}")
    return _solve_highs(mip, time_limit, verbose, start)


# ---------------------------------------------------------------------------------------------- Gurobi


class _GurobiUnusable(Exception):
    """Gurobi cannot take this model here; `quiet` for the expected case of gurobipy not being installed."""

    def __init__(self, message: str, *, quiet: bool = False, size_limit: bool = False):
        super().__init__(message)
        self.quiet = quiet
        self.size_limit = size_limit


class _GurobiState:
    """Per-process memory of Gurobi's fate, so a sweep does not retry a refused license on every point."""

    def __init__(self):
        self.env = None
        self.warned = False
        self.broken = False  # import or license failure: skip Gurobi for good in "auto"
        self.too_large: tuple[int, int] | None = None  # smallest (vars, rows) the license refused

    def known_unusable(self, mip: MIP) -> bool:
        if self.broken:
            return True
        return self.too_large is not None and mip.num_vars >= self.too_large[0] and mip.num_rows >= self.too_large[1]

    def remember(self, mip: MIP, error: _GurobiUnusable) -> None:
        if not error.size_limit:
            self.broken = True
        elif self.too_large is None or (mip.num_vars <= self.too_large[0] and mip.num_rows <= self.too_large[1]):
            self.too_large = (mip.num_vars, mip.num_rows)

    def warn_once(self, message: str) -> None:
        if not self.warned:
            self.warned = True
            logger.warning(message)


_GUROBI = _GurobiState()


def _import_gurobipy():
    try:
        import gurobipy
    except ImportError as e:  # also raised when sys.modules["gurobipy"] is None
        raise _GurobiUnusable(
            f"gurobipy cannot be imported ({e}); install it with `pip install gurobipy`", quiet=True
        ) from None
    return gurobipy


def _gurobi_env(gp):
    if _GUROBI.env is None:
        try:
            env = gp.Env(empty=True)
            env.setParam("OutputFlag", 0)  # the license banner too
            env.start()
        except gp.GurobiError as e:
            raise _GurobiUnusable(f"the Gurobi license was refused (error {e.errno}: {e})") from None
        _GUROBI.env = env
    return _GUROBI.env


def _solve_gurobi(mip: MIP, time_limit, verbose, start) -> Solution:
    gp = _import_gurobipy()
    from scipy.sparse import csr_matrix

    env = _gurobi_env(gp)
    GRB = gp.GRB
    try:
        with gp.Model("infoq_allocation", env=env) as model:
            model.Params.OutputFlag = 1 if verbose else 0
            model.Params.MIPGap = 0.0
            model.Params.MIPGapAbs = 0.0
            if time_limit is not None:
                model.Params.TimeLimit = float(time_limit)
            x = model.addMVar(mip.num_vars, vtype=GRB.BINARY, obj=mip.cost)
            if start is not None:
                x.Start = start
            if mip.num_rows:
                A = csr_matrix((mip.row_value, mip.row_index, mip.row_start), shape=(mip.num_rows, mip.num_vars))
                eq = mip.row_lower == mip.row_upper
                # every row of ours is an equality or a one-sided <= row
                if eq.any():
                    model.addMConstr(A[eq], x, "=", mip.row_upper[eq])
                if (~eq).any():
                    model.addMConstr(A[~eq], x, "<", mip.row_upper[~eq])
            start = time.perf_counter()
            model.optimize()
            elapsed = time.perf_counter() - start
            status = model.Status
            if status == GRB.OPTIMAL:
                kind = "optimal"
            elif status in (GRB.INFEASIBLE, GRB.INF_OR_UNBD):  # binaries: never unbounded
                return Solution("infeasible", "gurobi", elapsed)
            elif status == GRB.TIME_LIMIT and model.SolCount > 0:
                kind = "time_limit"
            elif status == GRB.TIME_LIMIT:
                raise RuntimeError(
                    f"Gurobi found no feasible bit allocation within time_limit={time_limit} s; raise it"
                )
            else:
                raise RuntimeError(f"Gurobi stopped with status code {status} (see GRB.Status); try solver='highs'")
            return Solution(
                kind, "gurobi", elapsed, x=np.array(x.X), objective=float(model.ObjVal), mip_gap=float(model.MIPGap)
            )
    except gp.GurobiError as e:
        if e.errno == _GRB_SIZE_LIMIT:
            raise _GurobiUnusable(
                f"the model ({mip.num_vars} variables, {mip.num_rows} constraints) is too large for the "
                f"size-limited Gurobi license",
                size_limit=True,
            ) from None
        if e.errno in _GRB_LICENSE_ERRORS:
            raise _GurobiUnusable(f"the Gurobi license was refused (error {e.errno}: {e})") from None
        raise


# ---------------------------------------------------------------------------------------------- HiGHS


_HIGHS_BANNER_SHOWN = False


@contextlib.contextmanager
def _stdout_to_devnull():
    """HiGHS prints a banner from C++ on the first `Highs()` of a process, before options can silence it."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _new_highs(verbose: bool):
    global _HIGHS_BANNER_SHOWN
    import highspy

    if verbose or _HIGHS_BANNER_SHOWN:
        h = highspy.Highs()
    else:
        try:
            with _stdout_to_devnull():
                h = highspy.Highs()
        except OSError:  # no usable file descriptor 1: let the banner through
            h = highspy.Highs()
    _HIGHS_BANNER_SHOWN = True
    return h


def _solve_highs(mip: MIP, time_limit, verbose, start) -> Solution:
    try:
        import highspy
    except ImportError as e:
        raise SolverUnavailableError(f"HiGHS is not available ({e}); install it with `pip install highspy`") from None

    h = _new_highs(verbose)
    h.setOptionValue("output_flag", bool(verbose))
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", 0.0)
    if time_limit is not None:
        h.setOptionValue("time_limit", float(time_limit))

    lp = highspy.HighsLp()
    lp.num_col_ = mip.num_vars
    lp.num_row_ = mip.num_rows
    lp.col_cost_ = mip.cost
    lp.col_lower_ = np.zeros(mip.num_vars)
    lp.col_upper_ = np.ones(mip.num_vars)
    lp.row_lower_ = np.where(np.isinf(mip.row_lower), -highspy.kHighsInf, mip.row_lower)
    lp.row_upper_ = mip.row_upper
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.num_col_ = mip.num_vars
    lp.a_matrix_.num_row_ = mip.num_rows
    lp.a_matrix_.start_ = mip.row_start
    lp.a_matrix_.index_ = mip.row_index
    lp.a_matrix_.value_ = mip.row_value
    lp.integrality_ = [highspy.HighsVarType.kInteger] * mip.num_vars
    if h.passModel(lp) != highspy.HighsStatus.kOk:
        raise RuntimeError("HiGHS rejected the allocation model (passModel failed)")
    if start is not None:
        hint = highspy.HighsSolution()
        hint.col_value = np.asarray(start, dtype=np.float64)
        hint.value_valid = True
        h.setSolution(hint)  # a rejected hint only costs speed

    start = time.perf_counter()
    h.run()
    elapsed = time.perf_counter() - start
    status = h.getModelStatus()
    info = h.getInfo()
    has_solution = info.primal_solution_status == 2  # kSolutionStatusFeasible
    M = highspy.HighsModelStatus
    if status == M.kOptimal:
        kind = "optimal"
    elif status in (M.kInfeasible, M.kUnboundedOrInfeasible):  # binaries: never unbounded
        return Solution("infeasible", "highs", elapsed)
    elif status == M.kTimeLimit and has_solution:
        kind = "time_limit"
    elif status == M.kTimeLimit:
        raise RuntimeError(f"HiGHS found no feasible bit allocation within time_limit={time_limit} s; raise it")
    else:
        raise RuntimeError(f"HiGHS stopped with status {h.modelStatusToString(status)!r}; try solver='gurobi'")
    x = np.asarray(h.getSolution().col_value, dtype=np.float64)
    return Solution(
        kind, "highs", elapsed, x=x, objective=float(info.objective_function_value), mip_gap=float(info.mip_gap)
    )
