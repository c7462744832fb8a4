"""One call from a float model to a packed one: `quantize_with_infoq(model, config)`.

The pipeline is a list of stages over one `Run` value (`run.py`), each `stage(run, config) -> run`
(`stages.py`): check the budget, calibrate (`data.py`), choose the rounding, score (the search),
GPTQ-aware costs, allocate (the ILP), refine (whole-model KL), activation ranges, pack.
`quantize.py` lists the stages a config selects; `summary.py` renders what the run did.
The transformers quantizer (quantize on load), the `infoq` CLI and the recipes call it.
"""

from .data import GPTQ_MIN_TOKENS, load_calibration_batches, resolve_rounding
from .quantize import quantize_with_infoq
from .run import QuantizationResult, Run
from .stages import check_budget_feasible
from .summary import condensed_policy, format_summary, group_size_lines, summarize

__all__ = [
    "GPTQ_MIN_TOKENS",
    "QuantizationResult",
    "Run",
    "check_budget_feasible",
    "condensed_policy",
    "format_summary",
    "group_size_lines",
    "load_calibration_batches",
    "quantize_with_infoq",
    "resolve_rounding",
    "summarize",
]
