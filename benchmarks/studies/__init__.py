"""One-off studies that still back a current default or a figure in benchmarks/RESULTS.md.

The reusable benchmarks (demo, compare, gptq, serving, spearman, ...) sit one folder up; a study
lives here while a default or a published figure rests on it, and goes (its conclusion kept in
RESULTS.md) once nothing does:

- `tune_infoq`: the Gaussian MI estimator and the probe width of the calibrated costs (`probe_bits=4`);
- `tune_change_power`: `change_power=1`;
- `mi_estimator_check`: the binning and k-NN estimators' settings, against closed forms;
- `probe_cost`: the prefix cache (on by default) against the paper's per-layer count, and HAWQ's cost;
- `search_memory`: the search's peak memory, this tree against an earlier commit;
- `pack_candidates`: packing from GPTQ's candidates against a new sequential GPTQ pass;
- `narrow_penalty`: the whole-model check offered ILP allocations with narrow widths' costs scaled.
"""
