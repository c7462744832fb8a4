"""Bit allocation: optimality against brute force, both solvers, fallback, verification, bad input."""

from __future__ import annotations

import itertools
import logging
import math
import random
import sys

import numpy as np
import pytest

from infoq_hf.allocation import (
    AllocationVerificationError,
    InfeasibleBudgetError,
    SolverUnavailableError,
    allocate,
    embedding_starts,
    pareto_sweep,
    plot_pareto,
    solvers,
)
from infoq_hf.allocation.ilp import build
from infoq_hf.allocation.spec import choices, resolve_spec
from infoq_hf.allocation.verify import verify
from infoq_hf.policy import BitPolicy, Budget
from infoq_hf.sensitivity.table import SensitivityTable

FLOAT = 32


def gurobi_usable() -> str | None:
    """None when gurobipy can solve a small model here, else the reason."""
    try:
        import gurobipy as gp

        env = gp.Env(empty=True)
        env.setParam("OutputFlag", 0)
        env.start()
        env.dispose()
    except Exception as e:  # ImportError or a refused license
        return f"gurobipy cannot run here: {e}"
    return None


GUROBI_SKIP = gurobi_usable()
SOLVERS = ["highs", pytest.param("gurobi", marks=pytest.mark.skipif(GUROBI_SKIP is not None, reason=str(GUROBI_SKIP)))]


def random_table(
    rng: random.Random, n_layers: int, bits=(2, 3, 4, 8), with_a=False, first_kind="linear"
) -> SensitivityTable:
    layers = {}
    for i in range(n_layers):
        out, inp = rng.choice([8, 16, 32]), rng.choice([16, 32, 64, 128])
        layers[f"block{i}.proj"] = {
            "params": out * inp,
            "macs": out * inp * rng.randint(1, 50),
            "shape": [out, inp],
            "kind": first_kind if i == 0 else "linear",
            "w": {b: rng.uniform(0.1, 1.0) * 2.0**-b * rng.choice([1, 10]) for b in bits},
            **({"a": {b: rng.uniform(0.0, 1.0) / b for b in bits}} if with_a else {}),
        }
    meta = {"group_size": 16, "symmetric": rng.random() < 0.5, "float_bytes": rng.randint(0, 5000)}
    return SensitivityTable("test", bits, layers, meta)


# ---------------------------------------------------------------------------------------------- brute force


def enumerate_all(
    table,
    *,
    bits=None,
    act_bits=None,
    fixed_a=None,
    alpha=1.0,
    pin=None,
    min_bits=None,
    max_bits=None,
    tie=None,
    tie_act=None,
    pin_a=None,
):
    """Every admissible assignment as arrays: objective and the four budget quantities (exact).
    `pin_a`: {name: activation bits} held fixed, weight bits free."""
    names = list(table.layers)
    w_bits = list(bits or table.bits)
    a_opts = list(act_bits) if act_bits else [fixed_a]
    opts = list(itertools.product(w_bits, a_opts))
    combos = np.array(list(itertools.product(range(len(opts)), repeat=len(names))), dtype=np.int64)
    W = np.array([o[0] for o in opts])[combos]
    A = np.array([FLOAT if o[1] is None else o[1] for o in opts])[combos]
    keep = np.ones(len(combos), bool)
    for j, n in enumerate(names):
        p = (pin or {}).get(n)
        if isinstance(p, tuple):
            keep &= (W[:, j] == p[0]) & (A[:, j] == p[1])
        elif p is not None:
            keep &= W[:, j] == p
        if (pin_a or {}).get(n) is not None:
            keep &= A[:, j] == pin_a[n]
        lo = min_bits if isinstance(min_bits, int) else (min_bits or {}).get(n)
        hi = max_bits if isinstance(max_bits, int) else (max_bits or {}).get(n)
        if lo is not None:
            keep &= W[:, j] >= lo
        if hi is not None:
            keep &= W[:, j] <= hi
    for groups, M in ((tie, W), (tie_act, A)):
        for g in groups or []:
            idx = [names.index(n) for n in g]
            for k in idx[1:]:
                keep &= M[:, k] == M[:, idx[0]]
    combos, W, A = combos[keep], W[keep], A[keep]
    obj = np.zeros(len(combos))
    packed = np.zeros(len(combos), dtype=np.int64)
    ops = np.zeros(len(combos), dtype=np.int64)
    wsum = np.zeros(len(combos), dtype=np.int64)
    for j, n in enumerate(names):
        info = table.layers[n]
        obj += np.array([table.w(n, o[0]) + (alpha * table.a(n, o[1]) if act_bits else 0.0) for o in opts])[
            combos[:, j]
        ]
        packed += np.array([table.layer_bytes(n, o[0]) for o in opts])[combos[:, j]]
        ops += info["macs"] * W[:, j] * A[:, j]
        wsum += info["params"] * W[:, j]
    n_params = sum(i["params"] for i in table.layers.values())
    fp32 = 4 * n_params
    return {
        "objective": obj,
        "size_bytes": packed + table.meta["float_bytes"],
        "bitops": ops,
        "avg_bits": wsum / n_params,
        "compression": fp32 / packed,
    }


def brute_optimum(all_, budget: Budget) -> float | None:
    ok = np.ones(len(all_["objective"]), bool)
    for kind, limit in budget.to_dict().items():
        ok &= all_[kind] >= limit * (1 - 1e-12) if kind == "compression" else all_[kind] <= limit * (1 + 1e-12)
    return float(all_["objective"][ok].min()) if ok.any() else None


def random_budget(rng, all_) -> Budget:
    """One to three budget kinds, each between the quantity's min and max over admissible assignments."""
    kinds = rng.sample(["avg_bits", "size_bytes", "bitops", "compression"], rng.randint(1, 3))
    values = {}
    for k in kinds:
        lo, hi = float(all_[k].min()), float(all_[k].max())
        values[k] = lo + rng.uniform(0.05, 0.9) * (hi - lo) if hi > lo else hi
        if k == "compression":
            values[k] = max(values[k], 1.0)
    return Budget(**values)


def random_constraints(rng, table):
    names = list(table.layers)
    kw = {}
    if rng.random() < 0.5:
        kw["pin"] = {rng.choice(names): rng.choice(table.bits)}
    if rng.random() < 0.5 and len(names) >= 3:
        kw["tie"] = [rng.sample(names, 2)] + ([rng.sample(names, 3)] if rng.random() < 0.3 else [])
    if rng.random() < 0.3:
        kw["min_bits"] = {rng.choice(names): 3}
    if rng.random() < 0.3:
        kw["max_bits"] = 4 if not kw.get("pin") or max(kw["pin"].values()) <= 4 else None
    # pins and ties may conflict by chance: keep only consistent draws
    return {k: v for k, v in kw.items() if v is not None}


def consistent(table, kw):
    try:
        resolve_spec(table, Budget(avg_bits=8), pin_first_last=False, **kw)
        choices(resolve_spec(table, Budget(avg_bits=8), pin_first_last=False, **kw))
    except ValueError:
        return False
    return True


CASES = list(range(30))


@pytest.mark.parametrize("solver", SOLVERS)
def test_optimum_matches_brute_force(solver):
    rng = random.Random(1234)
    checked = 0
    for case in CASES:
        table = random_table(
            rng, rng.randint(1, 8), bits=tuple(sorted(rng.sample([2, 3, 4, 5, 6, 8], rng.randint(2, 4))))
        )
        kw = random_constraints(rng, table)
        if not consistent(table, kw):
            kw = {}
        all_ = enumerate_all(
            table, pin=kw.get("pin"), min_bits=kw.get("min_bits"), max_bits=kw.get("max_bits"), tie=kw.get("tie")
        )
        budget = random_budget(rng, all_)
        best = brute_optimum(all_, budget)
        if best is None:
            with pytest.raises(InfeasibleBudgetError):
                allocate(table, budget, solver=solver, pin_first_last=False, **kw)
            continue
        policy = allocate(table, budget, solver=solver, pin_first_last=False, **kw)
        r = policy.report
        assert r.solver == solver and r.status == "optimal"
        assert r.objective == pytest.approx(best, rel=1e-9, abs=1e-12), (case, budget, kw)
        # the report's costs are the policy's, recomputed from the table
        chosen = {n: (lb.w_bits, lb.a_bits) for n, lb in policy.items()}
        assert r.size_bytes == sum(table.layer_bytes(n, w) for n, (w, _) in chosen.items()) + table.meta["float_bytes"]
        assert r.bitops == sum(table.layers[n]["macs"] * w * FLOAT for n, (w, _) in chosen.items())
        checked += 1
    assert checked >= 20


def test_embedding_starts_are_the_optimum_with_the_embedding_pinned_at_each_wider_width_that_fits():
    """Brute force: each start is the least-cost assignment with the embedding at its width; every width
    above the ILP's choice that meets the budget has one, and no other start is given."""
    rng = random.Random(77)
    seen = set()
    for case in range(40):
        table = random_table(rng, rng.randint(2, 6), bits=(2, 3, 4, 8), first_kind="embedding")
        all_ = enumerate_all(table)
        budget = random_budget(rng, all_)
        if brute_optimum(all_, budget) is None:
            continue
        policy = allocate(table, budget, pin_first_last=False)
        starts = embedding_starts(policy)
        emb = "block0.proj"
        expected = set()
        for bits in [b for b in table.bits if b > policy[emb].w_bits]:
            best = brute_optimum(enumerate_all(table, pin={emb: bits}), budget)
            if best is None:
                continue
            expected.add(f"pin:{emb}={bits}")
            widths = starts[f"pin:{emb}={bits}"]
            assert widths[emb] == bits and set(widths) == set(table.layers)
            assert sum(table.w(n, w) for n, w in widths.items()) == pytest.approx(best, rel=1e-9, abs=1e-12), case
            verify(table, policy.report.spec, {n: (w, None) for n, w in widths.items()})  # within the budget
        assert set(starts) == expected
        seen.add(len(expected))
    assert {0, 1} <= seen and max(seen) >= 2  # no start, one, several: each case exercised


def test_embedding_starts_keep_the_ilps_activation_widths():
    """W/A: the refinement moves weight widths only, so each start is the optimum with every layer's
    activation width held at the ILP's (brute force) and meets a BitOps budget with them."""
    rng = random.Random(11)
    checked = 0
    for case in range(30):
        table = random_table(rng, rng.randint(2, 4), bits=(2, 4, 8), with_a=True, first_kind="embedding")
        all_ = enumerate_all(table, act_bits=(4, 8))
        budget = random_budget(rng, all_)
        if brute_optimum(all_, budget) is None:
            continue
        policy = allocate(table, budget, act_bits=(4, 8), pin_first_last=False)
        a_of = {n: lb.a_bits for n, lb in policy.items()}
        for name, widths in embedding_starts(policy).items():
            bits = int(name.rpartition("=")[2])
            pins = {n: (bits if n == "block0.proj" else w, a_of[n]) for n, w in widths.items()}
            verify(table, policy.report.spec, pins)
            pin = {"block0.proj": (bits, a_of["block0.proj"])}
            best = brute_optimum(enumerate_all(table, act_bits=(4, 8), pin=pin, pin_a=a_of), budget)
            objective = sum(table.w(n, w) + table.a(n, a_of[n]) for n, w in widths.items())
            assert objective == pytest.approx(best, rel=1e-9, abs=1e-12), case
            checked += 1
    assert checked >= 5


def test_embedding_starts_skip_pinned_embeddings_and_tables_without_one():
    rng = random.Random(3)
    table = random_table(rng, 4, first_kind="embedding")
    assert embedding_starts(allocate(table, Budget(avg_bits=3.0), pin={"block0.proj": 2})) == {}
    plain = random_table(rng, 4)
    assert embedding_starts(allocate(plain, Budget(avg_bits=3.0), pin_first_last=False)) == {}
    with pytest.raises(ValueError, match="a policy that allocate"):
        embedding_starts(BitPolicy({"block0.proj": 4}))


def test_gurobi_and_highs_agree():
    if GUROBI_SKIP:
        pytest.skip(GUROBI_SKIP)
    rng = random.Random(99)
    for _ in range(12):
        table = random_table(rng, 8, bits=(2, 3, 4, 5, 6, 8), with_a=True)
        budget = Budget(
            avg_bits=rng.uniform(2.5, 6.0), bitops=sum(i["macs"] for i in table.layers.values()) * rng.uniform(3, 6) * 6
        )
        kw = dict(
            act_bits=[4, 8],
            alpha=rng.uniform(0, 2),
            tie=[["block1.proj", "block2.proj"]],
            tie_activations=[["block3.proj", "block4.proj"]],
        )
        h = allocate(table, budget, solver="highs", **kw)
        g = allocate(table, budget, solver="gurobi", **kw)
        assert h.report.objective == pytest.approx(g.report.objective, rel=1e-9)


@pytest.mark.parametrize("solver", SOLVERS)
def test_weight_activation_pairs_with_alpha(solver):
    rng = random.Random(7)
    for alpha in (0.0, 0.5, 3.0):
        table = random_table(rng, 5, bits=(2, 4, 6, 8), with_a=True)
        kw = dict(act_bits=[4, 8], tie_activations=[["block0.proj", "block1.proj"]], pin={"block2.proj": (6, 8)})
        all_ = enumerate_all(
            table, act_bits=[4, 8], alpha=alpha, pin={"block2.proj": (6, 8)}, tie_act=[["block0.proj", "block1.proj"]]
        )
        budget = Budget(
            bitops=float(np.quantile(all_["bitops"], 0.3)), avg_bits=float(np.quantile(all_["avg_bits"], 0.6))
        )
        best = brute_optimum(all_, budget)
        policy = allocate(table, budget, solver=solver, alpha=alpha, **kw)
        assert policy.report.objective == pytest.approx(best, rel=1e-9)
        assert policy["block2.proj"].w_bits == 6 and policy["block2.proj"].a_bits == 8
        assert policy["block0.proj"].a_bits == policy["block1.proj"].a_bits
        assert all(lb.a_bits in (4, 8) for lb in policy.values())


def test_fixed_activation_bits_count_in_bitops():
    rng = random.Random(3)
    table = random_table(rng, 4)
    all_ = enumerate_all(table, fixed_a=8)
    budget = Budget(bitops=float(np.median(all_["bitops"])))
    policy = allocate(table, budget, fixed_a_bits=8)
    assert policy.report.objective == pytest.approx(brute_optimum(all_, budget), rel=1e-9)
    assert all(lb.a_bits == 8 for lb in policy.values())
    assert policy.report.bitops == sum(table.layers[n]["macs"] * lb.w_bits * 8 for n, lb in policy.items())


def test_pin_first_last_for_cnns():
    rng = random.Random(5)
    cnn = random_table(rng, 5, first_kind="conv2d")
    policy = allocate(cnn, Budget(avg_bits=8), pin_first_last=True)
    names = list(cnn.layers)
    assert policy[names[0]].w_bits == 8 and policy[names[-1]].w_bits == 8
    low = allocate(cnn, Budget(avg_bits=8), pin_first_last=True, first_last_bits=4)
    assert low[names[0]].w_bits == 4 and low[names[-1]].w_bits == 4
    # an explicit pin overrides the automatic one; pin_first_last=False frees both ends
    assert allocate(cnn, Budget(avg_bits=8), pin_first_last=True, pin={names[0]: 2})[names[0]].w_bits == 2
    free = allocate(cnn, Budget(avg_bits=2), pin_first_last=False)
    assert all(lb.w_bits == 2 for lb in free.values())
    lm = random_table(rng, 3)  # a transformer (first layer linear): nothing pinned by default
    assert all(lb.w_bits == 2 for lb in allocate(lm, Budget(avg_bits=2)).values())


def test_auto_pins_only_small_end_layers():
    """A large classifier (MobileNetV2's holds 37% of the weights) is not pinned unless asked."""
    from infoq_hf.sensitivity import SensitivityTable

    layers = {
        "stem": {"params": 10, "kind": "conv2d"},
        "body": {"params": 600, "kind": "conv2d"},
        "head": {"params": 400, "kind": "linear"},
    }
    for info in layers.values():
        info["w"] = {2: 1.0, 4: 0.1, 8: 0.01}
    table = SensitivityTable("weight_mse", [2, 4, 8], layers)
    auto = allocate(table, Budget(avg_bits=4))
    assert auto["stem"].w_bits == 8 and auto["head"].w_bits != 8  # small stem pinned, large head free
    forced = allocate(table, Budget(avg_bits=8), pin_first_last=True)
    assert forced["head"].w_bits == 8


@pytest.mark.parametrize("kind", ["avg_bits", "size_bytes", "bitops", "compression"])
def test_infeasible_budget_states_smallest_achievable(kind):
    rng = random.Random(11)
    table = random_table(rng, 5)
    names = list(table.layers)
    kw = dict(pin={names[0]: 8}, tie=[[names[1], names[2]]], min_bits={names[3]: 3})
    all_ = enumerate_all(table, **{"pin": kw["pin"], "tie": kw["tie"], "min_bits": kw["min_bits"]})
    best = float(all_[kind].max() if kind == "compression" else all_[kind].min())
    limit = best * 1.3 if kind == "compression" else best * 0.8
    with pytest.raises(InfeasibleBudgetError) as err:
        allocate(table, Budget(**{kind: limit}), **kw)
    assert err.value.achievable[kind] == pytest.approx(best, rel=1e-12)
    text = str(err.value)
    assert "infeasible" in text
    if kind == "avg_bits":
        assert f"smallest achievable average under these constraints is {best:.4g} bits" in text
    elif kind == "compression":
        assert f"largest achievable compression under these constraints is {best:.4g}x" in text
    else:
        assert f"{round(best):,}" in text


def test_size_budget_below_float_bytes():
    table = random_table(random.Random(2), 3)
    with pytest.raises(InfeasibleBudgetError, match="smallest achievable size"):
        allocate(table, Budget(size_bytes=table.meta["float_bytes"] + 1))


# ---------------------------------------------------------------------------------------------- solvers


def test_auto_uses_highs_without_gurobipy(monkeypatch):
    monkeypatch.setitem(sys.modules, "gurobipy", None)  # `import gurobipy` now raises ImportError
    monkeypatch.setattr(solvers, "_GUROBI", solvers._GurobiState())
    table = random_table(random.Random(4), 4)
    assert allocate(table, Budget(avg_bits=4), solver="auto").report.solver == "highs"
    with pytest.raises(SolverUnavailableError, match=r"grbgetkey.*solver='highs'"):
        allocate(table, Budget(avg_bits=4), solver="gurobi")


def test_too_large_for_size_limited_license_falls_back_once(monkeypatch, caplog):
    if GUROBI_SKIP:
        pytest.skip(GUROBI_SKIP)
    monkeypatch.setattr(solvers, "_GUROBI", solvers._GurobiState())
    rng = random.Random(8)
    big = random_table(rng, 400, bits=(2, 3, 4, 5, 6, 8))  # 2400 variables: over the pip wheel's limit
    with caplog.at_level(logging.WARNING, logger="infoq_hf.allocation.solvers"):
        first = allocate(big, Budget(avg_bits=4))
        if first.report.solver == "gurobi":
            pytest.skip("this Gurobi license is unrestricted; no size-limit fallback to test")
        second = allocate(big, Budget(avg_bits=3.5))
    assert first.report.solver == second.report.solver == "highs"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "too large" in warnings[0].getMessage() and "HiGHS" in warnings[0].getMessage()
    with pytest.raises(SolverUnavailableError, match="too large.*grbgetkey"):
        allocate(big, Budget(avg_bits=4), solver="gurobi")


def test_unknown_solver():
    with pytest.raises(ValueError, match="unknown solver 'cplex'"):
        allocate(random_table(random.Random(1), 2), Budget(avg_bits=4), solver="cplex")


def test_time_limit_returns_best_found():
    table = random_table(random.Random(6), 6)
    policy = allocate(table, Budget(avg_bits=4), solver="highs", time_limit=30)
    assert policy.report.status == "optimal" and policy.report.mip_gap <= 1e-9


# ---------------------------------------------------------------------------------------------- verifier


def test_verifier_rejects_broken_solutions():
    rng = random.Random(21)
    table = random_table(rng, 4)
    names = list(table.layers)
    spec = resolve_spec(table, Budget(avg_bits=4), pin={names[0]: 8}, tie=[[names[1], names[2]]], pin_first_last=False)
    model = build(table, spec, choices(spec))
    sol = solvers.solve(model.mip, "highs")
    good = model.decode(sol.x)
    verify(table, spec, good, sol.objective * model.objective_scale)
    with pytest.raises(AllocationVerificationError, match="pinned"):
        verify(table, spec, {**good, names[0]: (2, None)})
    with pytest.raises(AllocationVerificationError, match="tied"):
        verify(table, spec, {**good, names[1]: (2, None), names[2]: (3, None)})
    with pytest.raises(AllocationVerificationError, match="over the budget"):
        verify(table, spec, {n: (8, None) for n in names})
    with pytest.raises(AllocationVerificationError, match="objective"):
        verify(table, spec, good, sol.objective * model.objective_scale + 1.0)
    with pytest.raises(AllocationVerificationError, match="no bits chosen"):
        verify(table, spec, {names[0]: (8, None)})
    # decoding rejects two choices for one layer
    x = sol.x.copy()
    lo, hi = model.spans[names[3]]
    x[lo:hi] = 1.0
    with pytest.raises(RuntimeError, match="two bit-widths"):
        model.decode(x)


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_inputs():
    rng = random.Random(31)
    table = random_table(rng, 4)
    n0, n1, n2, n3 = table.layers
    B = Budget(avg_bits=6)
    cases = [
        (dict(pin={"nope": 4}), "lacks"),
        (dict(tie=[[n0, "block9.prj"]]), "lacks"),
        (dict(pin={n0: 5}), "outside the candidate bits"),
        (dict(pin={n0: 1}), "not supported"),
        (dict(min_bits={n0: 6}, max_bits={n0: 3}), "min_bits 6 > max_bits 3"),
        (dict(pin={n0: 2, n1: 4}, tie=[[n0, n1]]), "tied layers cannot share bits"),
        (dict(pin={n0: 2}, min_bits=3), "outside its bounds"),
        (dict(bits=[2, 5]), "not scored"),
        (dict(bits=[]), "empty"),
        (dict(act_bits=[4, 8]), "needs activation scores"),
        (dict(fixed_a_bits=8, pin={n0: (4, 6)}), "activations are not allocated"),
        (dict(pin={n0: "4"}), "must be an int"),
        (dict(min_bits={n0: 5}, max_bits={n0: 5}), "no admissible weight bits"),
        (dict(pin_first_last="yes"), "pin_first_last"),
        (dict(alpha=-1), "alpha"),
        (dict(tie="block0.proj"), "list of groups"),
        (dict(time_limit=0), "time_limit"),
    ]
    for kw, message in cases:
        with pytest.raises(ValueError, match=message):
            allocate(table, B, solver="highs", pin_first_last=kw.pop("pin_first_last", False), **kw)

    broken = random_table(rng, 3)
    del broken.layers["block1.proj"]["w"][3]
    with pytest.raises(ValueError, match="no w-score for bits"):
        allocate(broken, B)
    nan = random_table(rng, 3)
    nan.layers["block2.proj"]["w"][4] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        allocate(nan, B)
    with pytest.raises(ValueError, match="unknown budget keys"):
        allocate(table, {"avg": 4})
    with pytest.raises(ValueError, match="SensitivityTable"):
        allocate({"layers": {}}, B)
    no_macs = SensitivityTable("t", [2, 4], {"a": {"params": 10, "macs": 0, "w": {2: 1.0, 4: 0.5}}})
    with pytest.raises(ValueError, match="MAC counts"):
        allocate(no_macs, Budget(bitops=100))


# ---------------------------------------------------------------------------------------------- sweep and plot


def test_pareto_sweep_and_plot(tmp_path):
    rng = random.Random(41)
    table = random_table(rng, 6)
    budgets = [Budget(avg_bits=b) for b in (1.5, 2.5, 3.5, 4.5, 6.0, 8.0)]
    policies = pareto_sweep(table, budgets, solver="highs")
    assert len(policies) == 5  # 1.5 bits is infeasible and skipped
    objectives = [p.report.objective for p in policies]
    assert all(a >= b - 1e-12 for a, b in zip(objectives, objectives[1:]))  # more bits, less sensitivity
    with pytest.raises(InfeasibleBudgetError):
        pareto_sweep(table, budgets, skip_infeasible=False)
    path = plot_pareto(policies, tmp_path / "pareto.png", chosen=policies[2])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    with pytest.raises(ValueError, match="no allocation report"):
        plot_pareto([BitPolicy({"x": 4})], tmp_path / "bad.png")


def test_report_and_policy_roundtrip():
    table = random_table(random.Random(51), 3, with_a=True)
    policy = allocate(table, {"avg_bits": 5, "compression": 4}, act_bits=[4, 8])
    assert BitPolicy.from_json(policy.to_json()) == policy
    d = policy.report.to_dict()
    assert d["budget"] == {"avg_bits": 5, "compression": 4} and d["status"] == "optimal"
    assert policy.report.compression >= 4 * (1 - 1e-9) and policy.report.avg_bits <= 5 + 1e-9
    assert "objective" in policy.report.summary()
