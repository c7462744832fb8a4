"""One-off studies that still back a current default or a figure in benchmarks/RESULTS.md.

The reusable benchmarks (demo, compare, gptq, serving, spearman, ...) sit one folder up; a study
lives here while a default or a published figure rests on it, and goes (its conclusion kept in
RESULTS.md) once nothing does:

- `tune_infoq`: the Gaussian MI estimator;
- `tune_change_power`: `change_power=1`;
- `mi_estimator_check`: the binning and k-NN estimators' settings, against closed forms;
- `probe_cost`: the prefix cache (on by default) against the paper's per-layer count, and HAWQ's cost;
- `search_memory`: the search's peak memory, this tree against an earlier commit;
- `pack_candidates`: packing from GPTQ's candidates against a new sequential GPTQ pass;
- `narrow_penalty`: the whole-model check offered ILP allocations with narrow widths' costs scaled;
- `search_noise`: the search's seed, directions, bfloat16 forwards and probe width on SmolLM2;
- `probe_width_cnn`, `probe_width_gguf`: the probe width (`probe_bits="auto"`) on a CNN and with the
  GGUF candidates {4, 5, 8};
- `embedding_share`, `widths_by_projection`: where the bytes and the bits go on SmolLM2.
"""
