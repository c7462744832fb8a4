"""`InfoQConfig`: what to search, under which budget, and (once known) the per-layer policy.

It is a transformers `QuantizationConfigMixin` (method name "infoq"), so it rides in
`from_pretrained(..., quantization_config=InfoQConfig(...))` and in a checkpoint's
`config.json`; the CLI and the timm checkpoint writer use the same `to_dict()`.

Three modes:
- search:  `InfoQConfig(budget=..., calibration=...)` -> calibrate, search, allocate, refine, pack;
- uniform: `InfoQConfig(bits=4)` -> every layer at 4 bits, no search (as GPTQConfig(bits=4));
- apply:   `InfoQConfig(policy={...})` -> pack with the given per-layer bits, no search.
After quantization the config carries the `policy` it packed with, so a saved checkpoint reloads
without searching again. GPTQConfig's names (`dataset`, `tokenizer`, `sym`, `desc_act`,
`damp_percent`, `group_size=-1`) are accepted where they mean the same (`config_aliases`).
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Mapping, Sequence

from transformers.utils.quantization_config import QuantizationConfigMixin

from .bitwidth import MAX_BITS, MIN_BITS, check_bits
from .calibration import (
    RECORD_KEYS,
    CalibrationSpec,
    calibration_record,
    is_dataset_object,
    is_text_list,
    spec_from_string,
)
from .config_aliases import infoq_settings
from .defaults import DEFAULT_REFINE_CHAINS, DEFAULT_REFINE_PASSES
from .policy import BitPolicy, Budget
from .quant.apply import COMPUTE_DTYPES
from .quant.gptq import GPTQOptions
from .quant.scheme import UNSET, PackingScheme
from .version import __version__

QUANT_METHOD = "infoq"
FORMAT_VERSION = 1  # of the checkpoint layout: packed tensor names + this config's keys
DEFAULT_BITS = (2, 3, 4, 8)
DEFAULT_SCHEME = PackingScheme(group_size=128)  # the packing fields a config leaves unset (but see `policy`)
ROUNDING_CHOICES = ("auto", "rtn", "gptq")
FLOAT_DTYPES = ("auto", None, "bfloat16", "float16", "float32")  # for the float leftovers; None: as loaded


def _check_group_size(name: str, value):
    if value is None or (name == "group_size" and value == -1 and not isinstance(value, bool)):
        return None  # -1: GPTQConfig's spelling of one scale per output channel
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"InfoQConfig.{name} must be a positive int (e.g. 32, 64, 128) or None (or -1) for one scale per "
            f"output channel, got {value!r}"
        )
    return value


def _check_count(name: str, value, none_means: str = "the calibration spec's"):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"InfoQConfig.{name} must be a positive int or None ({none_means}), got {value!r}")
    return value


class InfoQConfig(QuantizationConfigMixin):
    """Settings of an InfoQ mixed-precision quantization.

    Args:
        bits: candidate weight bit-widths the search chooses from (a list, each in 2..8), or one width (an int,
            or a list of one) and no budget: every layer at that width, with no search and no refinement.
        budget: a `Budget` or a dict with any of avg_bits / size_bytes / bitops / compression.
        alpha: weight of activation scores in the allocation objective.
        method: sensitivity method, "infoq" or a baseline ("hawq", "weight_mse", "random", "oracle").
        method_options: extra keyword options for the search (observers, estimator settings...).
        calibration: what to calibrate on: a `CalibrationSpec` (or its dict), a path (a text/json/csv/
            parquet file, a folder of them or of images, a `save_to_disk` folder) or a datasets Hub name,
            a `datasets.Dataset` / `IterableDataset`, a list of strings (documents), or a list of ready
            batches. config.json keeps a record of it (`calibration.calibration_record`: names, sizes, base
            names of local files; never the data or an absolute path).
        dataset: GPTQConfig's name for `calibration` (give one of the two).
        tokenizer: the tokenizer (or its name or folder) that turns text calibration data into batches;
            default: the one saved with the model. Not saved in config.json.
        num_samples, seq_len: how many calibration samples, and tokens per text sample (None: the spec's,
            128 and 512 by default); a smaller dataset gives a warning and all it has.
        search_samples: how many of the calibration samples (the first ones) the sensitivity search and
            the refinement use; None: all. GPTQ rounds with all of them: it wants thousands of tokens
            (see `rounding`), the search's probes and the refinement's passes cost time per sample.
            The next `search_samples` samples, when there are any, are the refinement's held-out
            check: its result is kept only if it beats the starting allocations there too.
        group_size: scales per `group_size` inputs of a Linear (None or -1: per output channel; default 128).
        conv_group_size: the same for Conv2d layers (default per output channel).
        symmetric: symmetric weight codes (no zero points); GPTQConfig's `sym`.
        clip_search: shrink each group's range to the clipping ratio with the least squared error
            before rounding, at widths up to 4 bits (at 5 and 8 it raised dev perplexity); "auto"
            (default): with GPTQ rounding, where it lowered dev perplexity at every budget
            (benchmarks/studies/clip_search.py), not with round to nearest. A rounding choice like
            `rounding`: it does not change the stored layout or sizes.
            These four form the packing scheme (`config.scheme`, a `PackingScheme`); with a `policy`
            from `allocate`, the layout fields left unset (the group sizes, `symmetric`) are those its
            table was budgeted with.
        rounding: "rtn" (round to nearest), "gptq" (error-compensating rounding from the calibration
            data, `infoq_hf.quant.gptq`) or "auto" (default): gptq for a causal LM calibrated on at least
            4096 tokens, rtn otherwise (dev perplexity: benchmarks/RESULTS.md, `gptq`). After
            quantization the config holds the rounding used; checkpoints written before this setting
            existed read as "rtn".
        gptq_options: GPTQ settings `{"damp": 0.1, "block_size": 128, "act_order": False}` (any subset);
            GPTQConfig's `damp_percent` and `desc_act` set `damp` and `act_order`.
        modules_to_not_convert: layer names (exact, dot-suffix or regex) kept in float; None = the
            transformers default (output embeddings / tied / last layer, e.g. `lm_head`, a classifier).
        quantize_embeddings: the input embeddings enter the search and the ILP as layers of their own
            (rows grouped like a Linear's inputs, `group_size`; Gemma's scaled lookups keep their scale,
            `quant.modules.lookup_scale`); an output head tied to one (an LM head sharing it) takes its
            codes and width: one tensor, stored once. Default False: the
            average-bits budget covers the other layers, as GPTQ's bits do; with a size budget, True
            gives more quality per byte (SmolLM2: benchmarks/RESULTS.md, section 6).
        solver, seed, pin_first_last: allocation settings.
        refine_passes: with calibration data, the ILP's allocation is run on the whole model and kept, or
            replaced by the widest uniform configuration under the budget (or, with
            `quantize_embeddings`, the ILP's solution with the embedding pinned wider) when that is closer
            to the float model (KL of the outputs; `allocation.compare_with_uniform`). refine_passes > 0 also
            tries that many random budget-preserving moves (`allocation.refine`). Default 0.
        refine_chains: with refine_passes > 0, independent refinements from the same start (seeds
            `seed`, `seed + 1`, ...); the one with the lowest KL on the held-out calibration samples (see
            `search_samples`; else on the searched ones) is kept. Default 3.
        refine_judge_samples: with refine_passes > 0, how many calibration samples (the first ones) the
            moves are judged on; more than `search_samples` turns on multi-fidelity selection (as in
            EvoPress): each round screens 8 moves on the search samples and judges the best one on
            these, and the held-out check takes the samples after them (as many, or what is left).
            `refine_passes` then counts the judged moves. None (default): the search samples.
        reround: with GPTQ rounding, GPTQ's candidates are rounded on the inputs of the budget's uniform
            start; with True, an allocation kept that differs from that start is also rounded by a
            sequential GPTQ pass on the inputs it gives itself, and the model is packed with whichever
            rounding runs closer to the float model on the check's samples
            (`allocation.compare_roundings`); one GPTQ pass more. Default False: on SmolLM2's dev text
            it helped at 2.5 bits but hurt at 3.5 (benchmarks/RESULTS.md, "Packing from the candidates").
        policy: per-layer bits `{NAME: {"w_bits": int, "a_bits": int|null}}`; when set, no search runs.
        float_dtype: "bfloat16", "float16" or "float32": after packing, what stays float (embeddings, norms,
            biases, skipped layers) is cast to it, so it is stored and run in it (packed scales stay
            float32). None keeps the dtype the model was loaded in. Default "auto": a transformers model
            loaded in float32 keeps its leftovers in bfloat16 (a checkpoint a third smaller on SmolLM2 at 3
            bits, perplexity within 0.5%: benchmarks/RESULTS.md section 1), any other model keeps its dtype.
        compute_dtype: None (default) or "bfloat16" / "float16": after packing, and whenever the checkpoint
            is loaded, packed Linear layers compute in this dtype when their input has another, as
            bitsandbytes' `bnb_4bit_compute_dtype` (`set_compute_dtype`): a model run in float32 then
            takes the bf16 int4 kernel on CPU (benchmarks/RESULTS.md section 6). None computes in the
            input's dtype (float32 inputs on CPU: the compiled stream kernels, `quant.stream_kernels`).
    """

    def __init__(
        self,
        bits: int | Sequence[int] = DEFAULT_BITS,
        budget: Budget | Mapping | None = None,
        alpha: float = 1.0,
        method: str = "infoq",
        method_options: Mapping | None = None,
        calibration=None,
        dataset=None,
        tokenizer=None,
        num_samples: int | None = None,
        seq_len: int | None = None,
        search_samples: int | None = None,
        group_size: int | None = UNSET,
        conv_group_size: int | None = UNSET,
        symmetric: bool = UNSET,
        clip_search: bool | str = "auto",
        rounding: str = "auto",
        gptq_options: Mapping | None = None,
        modules_to_not_convert: Sequence[str] | None = None,
        quantize_embeddings: bool = False,
        solver: str = "auto",
        seed: int = 0,
        pin_first_last: bool | str = "auto",
        refine_passes: int | None = None,
        refine_chains: int | None = None,
        refine_judge_samples: int | None = None,
        reround: bool = False,
        policy: BitPolicy | Mapping | None = None,
        float_dtype: str | None = "auto",
        compute_dtype: str | None = None,
        format_version: int = FORMAT_VERSION,
        quant_method: str = QUANT_METHOD,
        **kwargs,
    ):
        if quant_method != QUANT_METHOD:
            raise ValueError(f"InfoQConfig has quant_method {QUANT_METHOD!r}, got {quant_method!r}")
        if kwargs:  # GPTQConfig's names for settings of the same meaning; any other name is refused
            aliased = infoq_settings(kwargs, self._accepted_names())
            if "symmetric" in aliased:
                if symmetric is not UNSET:
                    raise ValueError("InfoQConfig got both symmetric= and sym= (GPTQConfig's name); pass one")
                symmetric = aliased["symmetric"]
            given_options = dict(gptq_options or {}) if isinstance(gptq_options, Mapping) else gptq_options
            for key, value in aliased.get("gptq_options", {}).items():
                if isinstance(given_options, Mapping) and key in given_options:
                    raise ValueError(
                        f"InfoQConfig got gptq_options[{key!r}] and its GPTQConfig name "
                        f"({'desc_act' if key == 'act_order' else 'damp_percent'}); pass one"
                    )
                given_options = {**(given_options or {}), key: value}
            gptq_options = given_options
        if dataset is not None:
            if calibration is not None:
                raise ValueError(
                    "InfoQConfig got both calibration= and dataset= (GPTQConfig's name for it); "
                    "pass the calibration data once"
                )
            calibration = dataset
        if format_version != FORMAT_VERSION:
            raise ValueError(
                f"this checkpoint uses infoq format {format_version}, but infoq_hf {__version__} reads format "
                f"{FORMAT_VERSION}; install the infoq_hf version that wrote it"
            )
        self.quant_method = QUANT_METHOD
        self.format_version = FORMAT_VERSION
        if isinstance(bits, int) and not isinstance(bits, bool) and budget is not None:
            raise ValueError(
                f"InfoQConfig(bits={bits}) packs every layer at {bits} bits, with no search; to search under a budget "
                f"give the candidate widths as a list, e.g. bits=[2, 3, 4, 8], budget={{'avg_bits': {bits}}}"
            )
        self.bits = self._check_bits(bits)
        self.budget = self._check_budget(budget)
        self.policy = (
            None if policy is None else (policy if isinstance(policy, BitPolicy) else BitPolicy.from_dict(policy))
        )
        if self.budget is None and self.policy is None and self.uniform_bits is None:
            raise ValueError(
                "InfoQConfig needs a budget to search for a policy, e.g. InfoQConfig(budget={'avg_bits': 4}), "
                "one width for every layer, e.g. InfoQConfig(bits=4), or a known policy to apply, e.g. "
                "InfoQConfig(policy={'model.layers.0.mlp.up_proj': 4})"
            )
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0:
            raise ValueError(f"InfoQConfig.alpha must be a number >= 0, got {alpha!r}")
        self.alpha = float(alpha)
        if not isinstance(method, str) or not method:
            raise ValueError(
                f"InfoQConfig.method must be a method name such as 'infoq' or 'weight_mse', got {method!r}"
            )
        self.method = method
        if method_options is not None and not isinstance(method_options, Mapping):
            raise ValueError(f"InfoQConfig.method_options must be a dict of search options, got {method_options!r}")
        self.method_options = dict(method_options or {})
        self.calibration = self._check_calibration(calibration)
        self.tokenizer = self._check_tokenizer(tokenizer)
        self.num_samples = _check_count("num_samples", num_samples)
        self.seq_len = _check_count("seq_len", seq_len)
        self.search_samples = _check_count("search_samples", search_samples, "all calibration samples")
        # Unset packing fields come from the scheme an allocated policy was budgeted with, else the defaults.
        budgeted = self.policy.scheme if self.policy is not None and self.policy.scheme is not None else DEFAULT_SCHEME
        given = {
            "group_size": group_size,
            "conv_group_size": conv_group_size,
            "symmetric": symmetric,
        }
        given = {k: (getattr(budgeted, k) if v is UNSET else v) for k, v in given.items()}
        self.group_size = _check_group_size("group_size", given["group_size"])
        self.conv_group_size = _check_group_size("conv_group_size", given["conv_group_size"])
        self.symmetric = bool(given["symmetric"])
        if not (isinstance(clip_search, bool) or clip_search == "auto"):
            raise ValueError(f"InfoQConfig.clip_search must be True, False or 'auto', got {clip_search!r}")
        self.clip_search = clip_search
        self.rounding, self.gptq_options = self._check_rounding(rounding, gptq_options)
        if modules_to_not_convert is not None:
            if isinstance(modules_to_not_convert, str) or not all(isinstance(m, str) for m in modules_to_not_convert):
                raise ValueError(
                    f"InfoQConfig.modules_to_not_convert must be a list of names, got {modules_to_not_convert!r}"
                )
            modules_to_not_convert = list(modules_to_not_convert)
        self.modules_to_not_convert = modules_to_not_convert
        if not isinstance(quantize_embeddings, bool):
            raise ValueError(f"InfoQConfig.quantize_embeddings must be True or False, got {quantize_embeddings!r}")
        self.quantize_embeddings = quantize_embeddings
        self.solver = str(solver)
        self.seed = int(seed)
        if pin_first_last not in ("auto", True, False):
            raise ValueError(f"InfoQConfig.pin_first_last must be 'auto', True or False, got {pin_first_last!r}")
        self.pin_first_last = pin_first_last
        if refine_passes is None:
            refine_passes = DEFAULT_REFINE_PASSES
        if isinstance(refine_passes, bool) or not isinstance(refine_passes, int) or refine_passes < 0:
            raise ValueError(f"InfoQConfig.refine_passes must be an int >= 0 (0 = no moves), got {refine_passes!r}")
        self.refine_passes = refine_passes
        refine_chains = DEFAULT_REFINE_CHAINS if refine_chains is None else refine_chains
        if isinstance(refine_chains, bool) or not isinstance(refine_chains, int) or refine_chains < 1:
            raise ValueError(f"InfoQConfig.refine_chains must be an int >= 1, got {refine_chains!r}")
        self.refine_chains = refine_chains
        self.refine_judge_samples = _check_count("refine_judge_samples", refine_judge_samples, "the search samples")
        if self.refine_judge_samples is not None:
            if not self.refine_passes or self.search_samples is None:
                raise ValueError(
                    "InfoQConfig.refine_judge_samples judges the refinement's moves after a screening on the search "
                    "samples: set refine_passes > 0 and search_samples (e.g. 4) as well"
                )
            if refine_judge_samples < self.search_samples:
                raise ValueError(
                    f"InfoQConfig.refine_judge_samples ({refine_judge_samples}) must be at least search_samples "
                    f"({self.search_samples}): the moves are screened on the search samples, then judged on these"
                )
        if not isinstance(reround, bool):
            raise ValueError(f"InfoQConfig.reround must be True or False, got {reround!r}")
        self.reround = reround
        if float_dtype not in FLOAT_DTYPES:
            raise ValueError(f"InfoQConfig.float_dtype must be one of {FLOAT_DTYPES}, got {float_dtype!r}")
        self.float_dtype = float_dtype
        if compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"InfoQConfig.compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")
        self.compute_dtype = compute_dtype

    # ------------------------------------------------------------------ validation helpers
    @staticmethod
    def _accepted_names() -> list[str]:
        return [n for n in inspect.signature(InfoQConfig.__init__).parameters if n not in ("self", "kwargs")]

    @staticmethod
    def _check_bits(bits) -> list[int]:
        if isinstance(bits, int) and not isinstance(bits, bool):
            return [check_bits(bits, "InfoQConfig.bits")]  # one width: every layer at it (no budget)
        if bits is None or isinstance(bits, (str, bytes)):
            raise ValueError(
                f"InfoQConfig.bits must be an int in {MIN_BITS}..{MAX_BITS} (every layer at that width) "
                f"or a list of candidate widths for the search, got {bits!r}"
            )
        try:
            values = sorted({check_bits(b, "InfoQConfig.bits") for b in bits})
        except TypeError:
            raise ValueError(
                f"InfoQConfig.bits must be a list of ints in {MIN_BITS}..{MAX_BITS}, got {bits!r}"
            ) from None
        if not values:
            raise ValueError(f"InfoQConfig.bits needs at least one candidate in {MIN_BITS}..{MAX_BITS}")
        return values

    @staticmethod
    def _check_rounding(rounding, gptq_options) -> tuple[str, dict]:
        if rounding not in ROUNDING_CHOICES:
            raise ValueError(f"InfoQConfig.rounding must be one of {ROUNDING_CHOICES}, got {rounding!r}")
        if gptq_options is not None and not isinstance(gptq_options, Mapping):
            raise ValueError(f"InfoQConfig.gptq_options must be a dict such as {{'damp': 0.1}}, got {gptq_options!r}")
        GPTQOptions.from_dict(gptq_options)  # validates
        return rounding, dict(gptq_options or {})

    @staticmethod
    def _check_budget(budget) -> Budget | None:
        if budget is None or isinstance(budget, Budget):
            return budget
        if isinstance(budget, Mapping):
            return Budget.from_dict(budget)
        raise ValueError(f"InfoQConfig.budget must be a Budget or a dict such as {{'avg_bits': 4}}, got {budget!r}")

    @staticmethod
    def _check_tokenizer(tokenizer):
        if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)) or callable(tokenizer):
            return tokenizer
        raise ValueError(
            "InfoQConfig.tokenizer must be a tokenizer (e.g. AutoTokenizer.from_pretrained(...)), or its "
            f"Hub name or folder, got {type(tokenizer).__name__}"
        )

    @staticmethod
    def _check_calibration(calibration):
        if calibration is None or isinstance(calibration, (list, tuple)) or is_dataset_object(calibration):
            return calibration  # texts, batches and datasets objects are used as given
        if isinstance(calibration, (str, os.PathLike)):
            return spec_from_string(calibration)  # a missing path fails here, not after loading the model
        if isinstance(calibration, Mapping):
            if any(k in calibration for k in RECORD_KEYS):
                return dict(calibration)  # the record a saved checkpoint carries: kept, not loadable
            return CalibrationSpec.from_dict(dict(calibration))
        if isinstance(calibration, CalibrationSpec):
            return calibration
        raise ValueError(
            "InfoQConfig.calibration must be a CalibrationSpec (or its dict), a path or dataset name, a datasets "
            f"Dataset, a list of strings or a list of batches, got {type(calibration).__name__}"
        )

    # ------------------------------------------------------------------ properties
    @property
    def uniform_bits(self) -> int | None:
        """The width every layer gets when `bits` names one width and there is no budget (uniform
        quantization); None when a budget asks for a search among the candidates."""
        return self.bits[0] if len(self.bits) == 1 and self.budget is None else None

    @property
    def scheme(self):
        """The `PackingScheme` of these settings (group sizes, symmetry, clipping, rounding; "auto" reads
        as "rtn" here: the pipeline resolves it for the model, `pipeline.resolve_rounding`)."""
        rounding = "rtn" if self.rounding == "auto" else self.rounding
        return PackingScheme(
            self.group_size, self.conv_group_size, self.symmetric, self.clip_search_for(rounding), rounding
        )

    def clip_search_for(self, rounding: str) -> bool:
        """Whether packing with `rounding` ("rtn" or "gptq") searches clipping ratios ("auto": with GPTQ)."""
        return rounding == "gptq" if self.clip_search == "auto" else self.clip_search

    @property
    def calibration_in_memory(self) -> bool:
        """Ready batches (not texts to tokenize, not a dataset)."""
        return isinstance(self.calibration, (list, tuple)) and not is_text_list(self.calibration)

    @property
    def calibration_options(self) -> dict:
        """The num_samples / seq_len set here, as load_calibration overrides."""
        return {k: v for k, v in (("num_samples", self.num_samples), ("seq_len", self.seq_len)) if v is not None}

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        """JSON-ready settings; calibration as its record (ready batches: null)."""
        cal = None if self.calibration_in_memory else calibration_record(self.calibration, **self.calibration_options)
        return {
            "quant_method": self.quant_method,
            "format_version": self.format_version,
            "bits": list(self.bits),
            "budget": None if self.budget is None else self.budget.to_dict(),
            "alpha": self.alpha,
            "method": self.method,
            "method_options": copy.deepcopy(self.method_options),
            "calibration": cal,
            "num_samples": self.num_samples,
            "seq_len": self.seq_len,
            "search_samples": self.search_samples,
            "group_size": self.group_size,
            "conv_group_size": self.conv_group_size,
            "symmetric": self.symmetric,
            "clip_search": self.clip_search,
            "rounding": self.rounding,
            "gptq_options": copy.deepcopy(self.gptq_options),
            "modules_to_not_convert": None
            if self.modules_to_not_convert is None
            else list(self.modules_to_not_convert),
            "quantize_embeddings": self.quantize_embeddings,
            "solver": self.solver,
            "seed": self.seed,
            "pin_first_last": self.pin_first_last,
            "refine_passes": self.refine_passes,
            "refine_chains": self.refine_chains,
            "refine_judge_samples": self.refine_judge_samples,
            "reround": self.reround,
            "policy": None if self.policy is None else self.policy.to_dict(),
            "float_dtype": self.float_dtype,
            "compute_dtype": self.compute_dtype,
        }

    def __iter__(self):
        yield from self.to_dict().items()

    @classmethod
    def from_dict(cls, config_dict: Mapping, return_unused_kwargs: bool = False, **kwargs):
        config_dict = dict(config_dict)
        if config_dict.get("policy") is not None:  # a saved config: written before `rounding` existed = rtn
            config_dict.setdefault("rounding", "rtn")
        config = cls(**config_dict)
        unused = config.update(**kwargs)
        return (config, unused) if return_unused_kwargs else config

    def __eq__(self, other) -> bool:
        return isinstance(other, InfoQConfig) and self.to_dict() == other.to_dict()

    def __deepcopy__(self, memo):
        # transformers deep-copies the model config; calibration data (batches, texts, a dataset) and the
        # tokenizer are shared.
        new = copy.copy(self)
        shared = ("calibration", "tokenizer")
        new.__dict__ = {k: (v if k in shared else copy.deepcopy(v, memo)) for k, v in self.__dict__.items()}
        return new

    # Loading a pre-quantized checkpoint with a passed InfoQConfig: transformers keeps the stored
    # config and sets these "loading attributes" on it; the setter below refuses a conflicting policy
    # there and then (nothing is stored).
    def get_loading_attributes(self) -> dict:
        return {"policy_passed_at_load": None if self.policy is None else self.policy.to_dict()}

    @property
    def policy_passed_at_load(self):
        return None

    @policy_passed_at_load.setter
    def policy_passed_at_load(self, requested) -> None:
        if requested is not None and self.policy is not None and BitPolicy.from_dict(requested) != self.policy:
            raise ValueError(
                "the InfoQConfig passed to from_pretrained has a policy that differs from the one stored in this "
                "pre-quantized checkpoint; its packed tensors fit only the stored policy. Load it without "
                "quantization_config, or quantize the float model with your policy instead."
            )
