"""Data and metrics shared by the benchmark runners (real assets only, see benchmarks/assets/)."""

from __future__ import annotations

import math
import platform
import time

import torch
import torch.nn.functional as F

from . import assets


def check_note(result) -> str:
    """What the pipeline's whole-model check kept and the calibration KL of each start it judged; then
    the GPTQ rounding the kept allocation was packed from, where it was rounded twice."""
    r = None if result.policy.report is None else result.policy.report.refinement
    if r is None:
        return ""
    note = f"kept {r.kept}: " + ", ".join(f"{k} {v:.4g}" for k, v in r.kl_starts.items())
    if r.kl_roundings:
        note += f"; packed from {r.rounding_kept} ({rounding_note(r.kl_roundings)})"
    return note


def rounding_note(kls: dict) -> str:
    """The calibration KL of each GPTQ rounding of one allocation (`stages.second_rounding`)."""
    return ", ".join(f"{k} {v:.4g}" for k, v in kls.items())


def cpu_model() -> str:
    """The CPU's model name (Linux), else the architecture: float results differ between CPUs' kernels."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return f"{platform.machine()} {names[0]}" if names else platform.machine()


def machine() -> str:
    import os

    return f"{cpu_model()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"


def jitter_weights(model, seed: int, skip_modules=()) -> None:
    """Multiply every quantizable layer's weight by (1 + 2^-24 n), n ~ N(0, 1) drawn from `seed`, in place:
    differences of the size float32 rounding makes (another CPU's kernels, another summation order), under
    which a sequential quantizer such as GPTQ may take another path."""
    from infoq_hf import quantizable_layers

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in quantizable_layers(model, skip_modules=list(skip_modules)):
            w = model.get_submodule(name).weight
            w.mul_(1 + 2.0**-24 * torch.randn(w.shape, generator=generator, dtype=w.dtype))


def lm_windows(texts: dict[str, str], tokenizer, n_seqs: int, seq_len: int, offset: int = 0) -> torch.Tensor:
    """Token windows [n_seqs, seq_len] cut from the concatenation of `texts` (in sorted work order),
    starting `offset` windows in. Non-overlapping, deterministic."""
    ids: list[int] = []
    need = (offset + n_seqs) * seq_len
    for name in sorted(texts):
        ids.extend(tokenizer(texts[name], add_special_tokens=False)["input_ids"])
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise ValueError(f"the texts hold {len(ids)} tokens, {need} needed")
    return torch.tensor(ids[offset * seq_len : need]).view(n_seqs, seq_len)


def lm_batches(windows: torch.Tensor, batch_size: int) -> list[dict]:
    return [{"input_ids": w, "attention_mask": torch.ones_like(w)} for w in windows.split(batch_size)]


DEV_WINDOWS = 16  # the evaluation works' first windows are dev data: every choice is made on them


def smollm2_data(n_calib: int, n_dev: int, n_test: int, seq_len: int = 128, batch_size: int = 4):
    """Calibration windows from the calibration works; dev and test windows from the evaluation works:
    dev = the first `n_dev` (<= DEV_WINDOWS) windows, test = windows after the first DEV_WINDOWS, so
    whatever any benchmark tunes on dev never touches the windows another one reports."""
    if n_dev > DEV_WINDOWS:
        raise ValueError(f"at most {DEV_WINDOWS} dev windows (the test windows start after them), got {n_dev}")
    model, tok = assets.load_smollm2()
    calib_texts, eval_texts = assets.text_split()
    calib = lm_batches(lm_windows(calib_texts, tok, n_calib, seq_len), batch_size)
    dev = lm_batches(lm_windows(eval_texts, tok, n_dev, seq_len), batch_size)
    test = lm_batches(lm_windows(eval_texts, tok, n_test, seq_len, offset=DEV_WINDOWS), batch_size)
    return model, tok, calib, dev, test


# InfoQ as the studies and benchmarks before the per-width scores measured it (one change per layer scaled
# across widths, at the last blocks and the output, with the input term; PROBED_CALIBRATED: with probes):
# they pin it to stay reproducible.
CALIBRATED = {"scores": "calibrated", "magnitude": False, "task_observers": "last", "input_weight": 1.0}
PROBED_CALIBRATED = {**CALIBRATED, "change_estimate": "probe"}


@torch.no_grad()
def probed_smollm2_table(model, calib: list[dict], seed: int):
    """The main job's InfoQ search of SmolLM2 (first 4 windows, candidates {2,3,4,8}, group 64, `lm_head`
    float) with the paper's probes: what the GPTQ candidates' studies were measured with."""
    from infoq_hf import search
    from infoq_hf.pipeline.data import first_samples

    return search(
        model,
        first_samples(calib, 4),
        bits=(2, 3, 4, 8),
        group_size=64,
        skip_modules=["lm_head"],
        seed=seed,
        **PROBED_CALIBRATED,
    )


@torch.no_grad()
def window_nll(model, batches: list[dict]) -> tuple[torch.Tensor, int]:
    """(the summed next-token NLL of every window, float64; tokens predicted per window)."""
    sums = []
    model.eval()
    for b in batches:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        targets = b["input_ids"][:, 1:]
        # flat (tokens, vocab) logits: cross_entropy on the transposed, strided layout is 10x less precise in float32
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="none"
        )
        sums.append(loss.double().view(targets.shape).sum(dim=1))
    return torch.cat(sums), batches[0]["input_ids"].shape[1] - 1


def perplexity_from_nll(sums: torch.Tensor, per_window: int) -> float:
    """Perplexity of windows whose summed NLLs are `sums`, `per_window` tokens predicted in each."""
    return math.exp(float(sums.sum()) / (len(sums) * per_window))


def perplexity(model, batches: list[dict]) -> float:
    return perplexity_from_nll(*window_nll(model, batches))


def paired_bootstrap(
    nll_a: torch.Tensor, nll_b: torch.Tensor, per_window: int, resamples: int, seed: int = 0
) -> torch.Tensor:
    """ppl(a) / ppl(b) on `resamples` resamplings of the windows (the same windows for a and b)."""
    if nll_a.shape != nll_b.shape:
        raise ValueError(
            f"the two models were scored on different windows: {tuple(nll_a.shape)} vs {tuple(nll_b.shape)}"
        )
    n = len(nll_a)
    pick = torch.randint(n, (resamples, n), generator=torch.Generator().manual_seed(seed))
    return torch.exp((nll_a - nll_b)[pick].sum(dim=1) / (n * per_window))


def ratio_interval(nll_a: torch.Tensor, nll_b: torch.Tensor, per_window: int, resamples: int = 10000) -> str:
    """ "ratio [lo, hi]": ppl(a) / ppl(b) and its 90% paired-bootstrap interval over the windows."""
    ratios = paired_bootstrap(nll_a, nll_b, per_window, resamples)
    lo, hi = torch.quantile(ratios, torch.tensor([0.05, 0.95], dtype=ratios.dtype)).tolist()
    ratio = perplexity_from_nll(nll_a, per_window) / perplexity_from_nll(nll_b, per_window)
    return f"{ratio:.3f} [{lo:.3f}, {hi:.3f}]"


def mnist_data(n_calib: int, n_dev: int, n_test: int, batch_size: int = 64, seed: int = 0):
    """MNIST CNN with normalised image batches: calibration from the train split, dev from the
    validation split, test from the test split."""
    model = assets.mnist_cnn().eval()
    (xtr, ytr), (xva, yva), (xte, yte) = assets.mnist()
    gen = torch.Generator().manual_seed(seed)

    def pick(x, y, n):
        idx = torch.randperm(len(x), generator=gen)[:n]
        imgs = (torch.as_tensor(x)[idx].float().view(-1, 1, 28, 28) - assets.MNIST_MEAN) / assets.MNIST_STD
        return [(a, b) for a, b in zip(imgs.split(batch_size), torch.as_tensor(y)[idx].long().split(batch_size))]

    return model, pick(xtr, ytr, n_calib), pick(xva, yva, n_dev), pick(xte, yte, n_test)


@torch.no_grad()
def top1(model, batches) -> float:
    model.eval()
    right = total = 0
    for x, y in batches:
        right += int((model(x).argmax(-1) == y).sum())
        total += len(y)
    return 100.0 * right / total


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def tiny_random_llama(seed: int):
    """A random 8-block Llama (vocabulary 256, width 64), seeded: the benchmarks' quick check that every
    row runs (compare's `tiny_llama` model, the AutoScheme peer's tiny case); its numbers mean nothing."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def gptq_scheme(group_size: int | None = 64, symmetric: bool = False):
    """The packing scheme the product's pipeline resolves for GPTQ rounding (its `clip_search="auto"`
    included), for benchmarks that round GPTQ's candidates themselves and pass them to the pipeline."""
    from infoq_hf import InfoQConfig

    return InfoQConfig(bits=[4], group_size=group_size, symmetric=symmetric, rounding="gptq").scheme


class CandidatesByStart:
    """GPTQ's candidates of `model` (`widths`: {layer: [bits, ...]}) on `calib`, for one uniform start at a
    time: the budgets whose uniform start is the same share them; one set is held (about 3 bytes per
    weight)."""

    def __init__(self, model, widths: dict, calib: list, scheme):
        self.model, self.widths, self.calib, self.scheme = model, widths, calib, scheme
        self._start, self._candidates = None, None

    def for_budget(self, table, avg_bits: float):
        """The candidates on the inputs of the uniform start that `table` gives at `avg_bits`."""
        from infoq_hf import Budget
        from infoq_hf.allocation import uniform_start
        from infoq_hf.quant.gptq import gptq_candidates

        prefix = uniform_start(table, Budget(avg_bits=avg_bits))
        start = tuple(sorted((prefix or {}).items()))
        if start != self._start:
            self._start, self._candidates = None, None  # the previous set is freed first
            self._candidates = gptq_candidates(
                self.model, self.widths, self.calib, scheme=self.scheme, prefix_bits=prefix
            )
            self._start = start
        return self._candidates
