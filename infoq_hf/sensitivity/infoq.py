"""InfoQ scores: how much quantizing one layer changes the information carried by later layers.

For an observer j (the model output, or a block output) the activations of every
calibration sample are projected onto K fixed random unit directions as they are
produced (only [n_samples, K] numbers are kept per observer). Then:

  task term   SMI(L_j; Y)   Y = labels (classifiers) or a bucketed next-token variable (causal LMs)
  input term  SMI(X_E; L_j) X_E = the reference model's own early representation: the pooled
                            input of the first block (embedding / stem output), or the flattened
                            model input when the model has no block stack

  dSMI_j(l, b) = |SMI_j(reference) - SMI_j(layer l at b bits)|       ("probe": one pass per layer and width)
              or its first-order term in Delta = Q_b(W_l) - W_l        ("first_order", default: every layer and
                                                                       width from one backward pass per term j)
                 sum_i |dSMI_j/dW_l,i * Delta_i|, summed over batches  (`magnitude=True`, default)
                 or |<dSMI_j/dW_l, Delta>|                              (`magnitude=False`)
  term(l, b)   = mean_{j in O, j after l} dSMI_j / mean_{j in O} SMI_j(reference)      (METHOD.md Eq. 3-4)
  D(l, b)      = weighted mean of the available terms (the information change)

Delta is the weight the model will be packed with: round to nearest's, or GPTQ's candidates when the
pipeline packs with GPTQ (`search(..., candidates=)`).

Three score forms (`scores`):
  "per_width" (default)   S(l, b) = D(l, b), measured at every candidate width with the packed weights
                          (the first order measures all widths in the same passes).
  "calibrated"            S(l, b) = alpha_l * t2(l, b), t2 = ||Q_b(W) - W||^2 / ||W||^2 of the
                          quantizer the model is packed with (exact, no data) and
                          alpha_l = D(l, b0)^p / t2(l, b0) from one probe per layer at `probe_bits`
                          b0 (a least-squares fit through the origin when several widths are given;
                          p = `change_power`). The cross-bit scale comes from the quantizer, the
                          layer's global sensitivity from the information flow (the form of HIGGS'
                          linearity theorem); GPTQ packing rescales it by GPTQ's error ratio.
  "eq4"                   S(l, b) = (1/b if inv_bits) * D(l, b): the paper's Eq. 4.

Activation scores (`search(score_activations=True)`) are probed at every activation width and follow the
weights' form: D(l, b) beside per-width weight scores, Eq. 4 (with 1/b) beside the others, so both sit on
one scale in the ILP (`inv_bits` overrides; on dev data Eq. 4 activations beside per-width weights
starved the activations, benchmarks/studies/activation_scores.py).

Observers default to the model output alone (the LM head's input for causal LMs), task term only;
`task_observers="last"` adds the last quarter of the blocks and `input_weight` the input term at the
middle half. The same samples, the same directions and the same reference serve every measurement,
so score differences are not estimator noise.

The paper measures dSMI with probes: one forward pass per (layer, width), each from the layer to the
output, so the search grows with layers x depth x widths. The first-order term is the same estimate's
derivative (the "gaussian" estimator is smooth), exact in the limit of small perturbations (tested
against finite differences). A signed first-order change lets the elements' and batches' contributions
cancel, so a layer's score depends on which way its roundings happened to fall; the magnitude form
adds them, the first-order bound of the change (AutoRound's AutoScheme scores its loss the same way).
On dev data (benchmarks/studies/score_forms.py) the per-width magnitude form at the output allocates
best of the forms tried on SmolLM2 and a ResNet-8; the calibrated form with probes, which extrapolates
one width's change to the others, is kept for the paper's measurement.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from ..information import random_directions, sliced_mi_continuous, sliced_mi_discrete
from .probe import Prober, find_blocks, replaced_modules
from .task import SampleIndex, output_tensor

OUTPUT = "<output>"
# Below this (nats) the reference carries no measurable information: the relative change would be noise.
MIN_REFERENCE_SMI = 1e-3


@dataclass
class InfoQOptions:
    """Estimator choices of the InfoQ score (see the module docstring)."""

    num_directions: int = 64
    # "gaussian" moves smoothly with the small perturbations a probe makes; rank-based "binning" barely
    # sees them (SmolLM2 dev-split oracle, within-bit Spearman 0.43 vs -0.17: benchmarks/studies/tune_infoq.py).
    estimator: str = "gaussian"
    max_samples: int = 2048
    max_observers: int = 4  # per term, evenly spaced over the selected blocks
    # The default observes the model output alone, the task term only: on dev data the per-width first order
    # allocates best that way on SmolLM2 (3.5 / 4.0 bits) and a ResNet-8 (2.5 / 3.0 bits) of every observer
    # setting tried (benchmarks/studies/score_forms.py); the input term and block observers stay available.
    task_weight: float = 1.0
    input_weight: float = 0.0
    inv_bits: bool | None = None  # Eq. 4's 1/b; None: for "eq4" and "calibrated" scores, not beside "per_width"
    task_observers: str | list = "output"  # "output", "last", "all", or a list of module names (+ "<output>")
    input_observers: str | list = "middle"  # "middle", "all", "none", or a list of module names
    lm_target: str = "next_token"  # causal LMs: "next_token" or "reference_prediction"
    lm_classes: int = 64  # causal LMs: the most frequent targets keep their identity, the rest share a class
    min_samples: int = 32
    # "per_width" (D(l, b) measured at every width), "calibrated" (alpha_l * t2(l, b)) or "eq4" (the paper's form)
    scores: str = "per_width"
    # Width(s) of the one probe per layer that measures alpha_l ("calibrated" only). "auto": the
    # narrowest candidate width of 3 bits or more, so the probe is a perturbation the allocation can
    # choose (2-bit probes saturate). On dev data it beat 4-bit probes with candidates {2,3,4,8} on
    # SmolLM2 and a CNN, and 3-bit probes with candidates {4,5,8} (benchmarks/RESULTS.md, "The probe's
    # width").
    probe_bits: int | list | str = "auto"
    # alpha_l = D(l, b0)^change_power / t2(l, b0) ("calibrated" only). Within a layer D grows like
    # t2^0.46 (first order in the perturbation's amplitude; benchmarks/studies/tune_infoq.py --calibrated), but
    # across layers D itself ranks better: ILP allocations on SmolLM2's dev windows are best with 1
    # (benchmarks/studies/tune_change_power.py: 76.7 vs 83.9 perplexity at 4.0 bits for 1 vs 1.5).
    change_power: float = 1.0
    # How each information change D(l, b) is measured. "first_order": <dSMI_j/dW_l, Q_b(W_l) - W_l>, the
    # change to first order in the perturbation, for every layer at once from one forward pass with
    # gradients per batch and one backward pass per observer term (the differentiable "gaussian"
    # estimator only). "probe": one forward pass per (layer, width) with that layer quantized, the
    # paper's measurement; its cost grows with layers x depth.
    change_estimate: str = "first_order"
    # First order only: D(l, b) from sum |dSMI_j/dW_l * (Q_b(W_l) - W_l)| over elements and batches instead of
    # the signed |<dSMI_j/dW_l, Q_b(W_l) - W_l>|, whose elements and batches cancel (per width, signed scores
    # allocated worse than the calibrated form on both models of benchmarks/studies/score_forms.py).
    magnitude: bool = True

    @property
    def divides_by_bits(self) -> bool:
        return self.scores != "per_width" if self.inv_bits is None else self.inv_bits

    @classmethod
    def from_dict(cls, options: Mapping) -> InfoQOptions:
        known = set(cls.__dataclass_fields__)
        unknown = set(options) - known
        if unknown:
            raise ValueError(f"unknown InfoQ options {sorted(unknown)}; known: {sorted(known)}")
        opts = cls(**options)
        if opts.scores not in ("calibrated", "per_width", "eq4"):
            raise ValueError(f"scores must be 'calibrated', 'per_width' or 'eq4', got {opts.scores!r}")
        if opts.inv_bits is not None and not isinstance(opts.inv_bits, bool):
            raise ValueError(f"inv_bits must be True, False or None (by score form), got {opts.inv_bits!r}")
        if not isinstance(opts.magnitude, bool):
            raise ValueError(f"magnitude must be True or False, got {opts.magnitude!r}")
        if (
            isinstance(opts.change_power, bool)
            or not isinstance(opts.change_power, (int, float))
            or not opts.change_power > 0
        ):
            raise ValueError(f"change_power must be a number > 0, got {opts.change_power!r}")
        widths = opts.probe_bits if isinstance(opts.probe_bits, (list, tuple)) else [opts.probe_bits]
        if opts.probe_bits != "auto" and (
            not widths or any(isinstance(b, bool) or not isinstance(b, int) or not 2 <= b < 8 for b in widths)
        ):
            raise ValueError(
                f"probe_bits must be 'auto', an int or a list of ints in 2..7 (8 is the reference), "
                f"got {opts.probe_bits!r}"
            )
        if opts.change_estimate not in ("first_order", "probe"):
            raise ValueError(f"change_estimate must be 'first_order' or 'probe', got {opts.change_estimate!r}")
        if opts.change_estimate == "first_order" and opts.estimator != "gaussian":
            raise ValueError(
                f"change_estimate='first_order' differentiates the MI estimate, which only the 'gaussian' "
                f"estimator allows; with estimator={opts.estimator!r} pass change_estimate='probe'"
            )
        if opts.lm_target not in ("next_token", "reference_prediction"):
            raise ValueError(f"lm_target must be 'next_token' or 'reference_prediction', got {opts.lm_target!r}")
        if opts.task_weight < 0 or opts.input_weight < 0 or opts.task_weight + opts.input_weight == 0:
            raise ValueError("task_weight and input_weight must be >= 0 and not both 0")
        return opts


def _select(names: list[str], how, fraction: tuple[float, float], limit: int) -> list[str]:
    if isinstance(how, (list, tuple)):
        return list(how)
    if how not in ("none", "output", "all", "last", "middle"):
        raise ValueError(
            f"observer selection {how!r} is not one of 'output', 'last', 'middle', 'all', 'none' or a list of names"
        )
    if how in ("none", "output") or not names:  # "output": the model output alone (added by the caller)
        return []
    if how != "all":
        lo, hi = fraction
        n = len(names)
        start = int(math.floor(lo * n))
        names = names[start : max(int(math.ceil(hi * n)), start + 1)]
    if len(names) > limit:  # evenly spaced, always keeping the last
        step = len(names) / limit
        names = [names[len(names) - 1 - int(i * step)] for i in range(limit)][::-1]
    return names


class _Recorder:
    """Hooks that project observer activations onto fixed directions, batch by batch."""

    def __init__(
        self, model, observers: list[str], samples: SampleIndex, directions: dict, output_hook_module, keep_graph=False
    ):
        self.model, self.samples, self.directions = model, samples, directions
        self.keep_graph = keep_graph  # keep the projections on the device, in the autograd graph
        self.observers = observers
        self.batch = 0
        self.proj: dict[str, list] = {}
        self.hooks = []
        for name in observers:
            if name == OUTPUT:
                continue
            self.hooks.append(model.get_submodule(name).register_forward_hook(self._hook(name)))
        self.output_module = output_hook_module
        if output_hook_module is not None and OUTPUT in observers:
            self.hooks.append(output_hook_module.register_forward_pre_hook(self._head_hook))

    def _head_hook(self, module, args):
        self._record(OUTPUT, args[0])

    def _hook(self, name):
        def hook(module, args, out):
            self._record(name, output_tensor(out))

        return hook

    def _record(self, name, activation):
        pooled = self.samples.pool(activation, self.batch)
        dirs = self.directions[name]
        if dirs.device != pooled.device:  # directions are made on the CPU; move them once
            dirs = self.directions[name] = dirs.to(pooled.device)
        with _float32_math(pooled.device):
            proj = pooled @ dirs.T  # [n, K]: small, and the MI estimators run on the CPU
        proj = proj if self.keep_graph else proj.cpu()
        if not torch.isfinite(proj).all():  # NaN/inf in the activation always reaches its projections
            raise ValueError(f"activations at observer {name!r} contain NaN/inf; check the model and the data")
        self.proj.setdefault(name, []).append(proj)

    def on_output(self, batch_idx, out):
        if OUTPUT in self.observers and self.output_module is None:
            self._record(OUTPUT, output_tensor(out))

    def result(self) -> dict[str, torch.Tensor]:
        return {k: torch.cat(v) for k, v in self.proj.items()}

    def remove(self):
        for h in self.hooks:
            h.remove()


class InfoQScorer:
    """Reference statistics once, then one `score(layer, bits)` per probe."""

    def __init__(self, prober: Prober, task: str, options: InfoQOptions, seed: int):
        self.prober, self.task, self.opts, self.seed = prober, task, options, seed
        model, batches = prober.model, prober.batches
        self.samples = SampleIndex(task, batches, options.max_samples, seed)
        blocks = list(find_blocks(model))
        # With fewer than two blocks there is no stack: observe the probed layers' outputs instead.
        candidates = blocks if len(blocks) >= 2 else list(prober.layers)
        self.task_obs = (
            _select(candidates, options.task_observers, (0.75, 1.0), options.max_observers)
            if options.task_weight
            else []
        )
        if options.task_weight and (
            not isinstance(options.task_observers, (list, tuple)) or OUTPUT in options.task_observers
        ):
            self.task_obs = [o for o in self.task_obs if o != OUTPUT] + [OUTPUT]
        self.input_obs = (
            _select(candidates, options.input_observers, (0.25, 0.75), options.max_observers)
            if options.input_weight
            else []
        )
        self.first_block = blocks[0] if len(blocks) >= 2 else None
        self.output_module = self._output_module(model)
        self.output_module_name = next((n for n, m in model.named_modules() if m is self.output_module), None)
        self.observers = list(dict.fromkeys(self.task_obs + self.input_obs))
        self._check_observers(model)
        self._reference()

    def _output_module(self, model):
        # Causal LMs: observe the LM head's input (same information as the huge-vocabulary logits).
        if self.task != "causal_lm" or not hasattr(model, "get_output_embeddings"):
            return None
        head = model.get_output_embeddings()
        return None if head is None or any(head is m for m in self.prober.layers.values()) else head

    def _check_observers(self, model):
        names = dict(model.named_modules())
        bad = [o for o in self.observers if o != OUTPUT and o not in names]
        if bad:
            raise ValueError(
                f"observer modules {bad} are not in the model; use module names from model.named_modules()"
            )
        if not self.observers:
            raise ValueError("no observers selected; enable the task term or pick input observers")

    # ------------------------------------------------------------------ reference
    @torch.no_grad()
    def _reference(self):
        model, prober = self.prober.model, self.prober
        self.directions: dict[str, torch.Tensor] = {}
        dims: dict[str, int] = {}
        events: list[tuple[str, str]] = []
        probe_hooks = []
        # Record feature sizes, X_E and execution order in one reference pass.
        xe_chunks = []

        def dim_hook(name):
            def hook(m, args, out=None, name=name):
                act = output_tensor(out) if out is not None else args[0]
                dims[name] = self.samples.pool(act, self._batch).shape[1]
                events.append(("end", name))

            return hook

        for name in self.observers:
            if name == OUTPUT and self.output_module is not None:
                probe_hooks.append(self.output_module.register_forward_pre_hook(dim_hook(OUTPUT)))
            elif name != OUTPUT:
                probe_hooks.append(model.get_submodule(name).register_forward_hook(dim_hook(name)))

        def layer_start(name):
            def hook(module, args):  # hooks return None so they never alter the model
                events.append(("start", name))

            return hook

        def record_xe(module, args, kwargs):
            xe_chunks.append(self.samples.pool(_first_input(args, kwargs), self._batch))

        for lname, layer in prober.layers.items():
            probe_hooks.append(layer.register_forward_pre_hook(layer_start(lname)))
        if self.first_block is not None:
            probe_hooks.append(
                model.get_submodule(self.first_block).register_forward_pre_hook(record_xe, with_kwargs=True)
            )
        predictions = []  # only the reference's argmax is ever read (lm_target="reference_prediction")
        try:
            for i, batch in enumerate(prober.batches):
                self._batch = i
                events.clear()
                logits = output_tensor(prober.forward(model, batch))
                predictions.append(logits.argmax(-1))
                if OUTPUT in self.observers and self.output_module is None:
                    dims[OUTPUT] = self.samples.pool(logits, i).shape[1]
                    events.append(("end", OUTPUT))
                del logits
        finally:
            for h in probe_hooks:
                h.remove()
        # Observer j is "after" layer l when j finishes after l starts (last pass's event order).
        first_start, last_end = {}, {}
        for pos, (kind, n) in enumerate(events):
            if kind == "start":
                first_start.setdefault(n, pos)
            else:
                last_end[n] = pos
        self.after = {
            layer: {o for o in self.observers if last_end.get(o, -1) > first_start.get(layer, 10**9)}
            for layer in prober.layers
        }
        k = self.opts.num_directions
        for idx, name in enumerate(self.observers):
            self.directions[name] = random_directions(dims[name], k, self.seed * 1009 + idx)
        # Y (task term) and X_E (input term) of every sample.
        self.y = self._targets(predictions) if self.task_obs else None
        if self.input_obs:
            if xe_chunks:
                xe = torch.cat(xe_chunks)
            else:
                xe = torch.cat(
                    [self.samples.pool(_model_input(b).float().flatten(1), i) for i, b in enumerate(prober.batches)]
                )
            with _float32_math(xe.device):
                self.xe_proj = (xe @ random_directions(xe.shape[1], k, self.seed * 1009 + 7919).to(xe.device).T).cpu()
        n = self.y.numel() if self.y is not None else self.xe_proj.shape[0]
        if n < self.opts.min_samples:
            raise ValueError(
                f"the calibration set gives {n} samples, but the InfoQ estimator needs at least "
                f"{self.opts.min_samples}; add calibration samples (or longer sequences)"
            )
        self.ref_proj = self._observe(None)  # [n, K] per observer: small
        self._ref = {
            "task": {o: float(self._smi_task(self.ref_proj[o])) for o in self.task_obs},
            "input": {o: float(self._smi_input(self.ref_proj[o])) for o in self.input_obs},
        }
        self.terms = [(kind, o) for kind in ("task", "input") for o in self._ref[kind]]

    def _targets(self, predictions) -> torch.Tensor:
        ys = []
        for i, batch in enumerate(self.prober.batches):
            if self.task == "causal_lm" and self.opts.lm_target == "reference_prediction":
                pred = predictions[i].reshape(-1)
                ys.append(pred[self.samples.rows[i]])
            else:
                ys.append(self.samples.labels(batch, i))
        y = torch.cat(ys).long().cpu()
        if self.task == "causal_lm":
            y = _bucket(y, self.opts.lm_classes)
        return y

    def _observe(self, layer: str | None) -> dict[str, torch.Tensor]:
        observers = self.observers if layer is None else [o for o in self.observers if o in self.after[layer]]
        rec = _Recorder(self.prober.model, observers, self.samples, self.directions, self.output_module)
        # The head's input is all InfoQ reads (its pre-hook records it); swap in a stand-in that skips
        # the vocabulary-sized matmul, the costliest layer of a small LM once early blocks are replayed.
        head = {} if self.output_module is None else {self.output_module_name: _SkippedHead(self.output_module, rec)}
        try:

            def on_output(i, out):
                rec.on_output(i, out)
                rec.batch = i + 1

            rec.batch = 0
            with replaced_modules(self.prober.model, head):
                self.prober.run(layer, on_output)
        finally:
            rec.remove()
        return rec.result()

    def _smi_task(self, proj: torch.Tensor) -> torch.Tensor:
        """SMI(L_j; Y) from an observer's [n, K] projections (differentiable with the gaussian estimator)."""
        k = proj.shape[1]
        with _float32_math(proj.device):
            mi = sliced_mi_discrete(proj, self.y, torch.eye(k, dtype=proj.dtype), estimator=self.opts.estimator)
        return mi.mean()

    def _smi_input(self, proj: torch.Tensor) -> torch.Tensor:
        """SMI(X_E; L_j) from an observer's [n, K] projections."""
        k = proj.shape[1]
        eye = torch.eye(k, dtype=proj.dtype)
        with _float32_math(proj.device):
            mi = sliced_mi_continuous(self.xe_proj.to(proj.dtype), proj, eye, eye, estimator=self.opts.estimator)
        return mi.mean()

    # ------------------------------------------------------------------ probes
    def score_current(self, layer: str, bits: int) -> float:
        """Eq. 4 score of the model as it is now (the caller has perturbed `layer` at `bits`)."""
        return self.eq4_score(self.information_change(layer), bits)

    def eq4_score(self, change: float, bits: int) -> float:
        """Eq. 4: the information change, over the width when `inv_bits` (by default unless per width)."""
        return change / bits if self.opts.divides_by_bits else change

    def information_change(self, layer: str) -> float:
        """D(l): the relative change of information at the observers after `layer`, as the model is now."""
        obs = self._observe(layer)
        smi = {"task": self._smi_task, "input": self._smi_input}
        return self.relative_change(
            layer, {(kind, o): abs(self._ref[kind][o] - float(smi[kind](obs[o]))) for kind, o in self.terms if o in obs}
        )

    def relative_change(self, layer: str, change: Mapping[tuple[str, str], float]) -> float:
        """D(l) from each term's absolute change |dSMI_j| (Eq. 3-4: observers after `layer` only)."""
        terms, weights = [], []
        for kind, weight in (("task", self.opts.task_weight), ("input", self.opts.input_weight)):
            ref = self._ref[kind]
            after = [o for o in ref if o in self.after[layer]]
            if not after or weight == 0:
                continue
            denom = sum(ref.values()) / len(ref)
            d = sum(change[(kind, o)] for o in after) / len(after)
            terms.append(d / max(abs(denom), MIN_REFERENCE_SMI))
            weights.append(weight)
        if not terms:
            raise ValueError(
                f"layer {layer!r} has no observer after it; the model output always counts, "
                "so keep the task term on or add observers after this layer"
            )
        return sum(t * w for t, w in zip(terms, weights)) / sum(weights)

    # ------------------------------------------------------------------ first order
    def first_order_changes(
        self,
        widths: Mapping[str, list[int]],
        terms: list | None = None,
        on_batch: Callable | None = None,
        perturbation: Callable[[str, int], torch.Tensor] | None = None,
        magnitude: bool = False,
    ) -> dict:
        """The first-order change of every term's SMI when one layer moves to `bits`:
        <dSMI_j/dW_l, Q_b(W_l) - W_l> for every layer l in `widths` and each of its widths b, from one
        forward pass with gradients per batch and one backward pass per (batch, term). Returns
        {(kind, observer): {layer: {bits: signed change}}} for `terms` (default: all of them).

        SMI is not a sum over samples, so its gradient with respect to each observer's projections
        comes first, from the reference projections of the whole set; each batch then backpropagates its
        share of it. One batch's graph is held at a time; round to nearest's perturbations Q_b(W_l) - W_l
        are held throughout (the size of the probed weights, per width).

        `perturbation(layer, bits)` -> Q_b(W_l) - W_l, shaped as the weight, replaces the round-to-nearest
        changes (for example GPTQ's); it is called when the layer's gradient arrives, so its changes need
        not be held. `magnitude=True` sums |dSMI_j/dW_l * (Q_b(W_l) - W_l)|
        element by element and batch by batch instead of the signed dot product: an upper bound of the
        first-order change that no cancellation between elements or batches can hide."""
        prober, model = self.prober, self.prober.model
        terms = self.terms if terms is None else terms
        smi = {"task": self._smi_task, "input": self._smi_input}
        grad_of_projection = {}
        for kind, o in terms:
            proj = self.ref_proj[o].detach().requires_grad_(True)
            with torch.enable_grad():
                (grad_of_projection[(kind, o)],) = torch.autograd.grad(smi[kind](proj), proj)
        names = list(widths)
        weights = {n: prober.layers[n].weight for n in names}
        if perturbation is None:  # round to nearest's changes, made once and held in the model's dtype
            held = {n: {b: prober.weight_change(n, b) for b in widths[n]} for n in names}

            def perturbation(name, bits):
                return held[name][bits]

        out = {t: {n: dict.fromkeys(widths[n], 0.0) for n in names} for t in terms}
        current = {}  # the term being backpropagated: {layer: {bits: change}}

        buffers = {}  # (device, role): a float32 buffer that tensors of a narrower dtype are widened into

        def widened(t, role):
            # bfloat16 dot products are slow on CPUs and imprecise, and a fresh float32 copy per layer and
            # term costs page faults; perturbations stay in the model's dtype, so memory does not double
            if t.dtype in (torch.float32, torch.float64):
                return t
            buffer = buffers.get((t.device, role))
            if buffer is None or buffer.numel() < t.numel():
                buffer = buffers[t.device, role] = torch.empty(t.numel(), dtype=torch.float32, device=t.device)
            return buffer[: t.numel()].copy_(t)

        def take_gradient(name):
            def hook(weight):  # dot the gradient with each perturbation as it arrives, then free it
                grad = widened(weight.grad.reshape(-1), "gradient")
                if magnitude:
                    grad = grad.abs()
                for b in widths[name]:
                    change = widened(perturbation(name, b).reshape(-1), "change").to(grad.dtype)
                    current[name][b] += float(torch.dot(grad, change.abs() if magnitude else change))
                weight.grad = None

            return hook

        observers = list(dict.fromkeys(o for _, o in terms))
        rec = _Recorder(model, observers, self.samples, self.directions, self.output_module, keep_graph=True)
        head = {} if self.output_module is None else {self.output_module_name: _SkippedHead(self.output_module, rec)}
        flags = {p: p.requires_grad for p in model.parameters()}
        grads = {n: w.grad for n, w in weights.items()}  # a caller's gradients are put back untouched
        hooks = []
        offset = dict.fromkeys(observers, 0)
        try:
            for p in flags:
                p.requires_grad_(False)
            for n, w in weights.items():
                w.grad = None
                w.requires_grad_(True)
                hooks.append(w.register_post_accumulate_grad_hook(take_gradient(n)))
            with replaced_modules(model, head), torch.enable_grad():
                for i, batch in enumerate(prober.batches):
                    rec.batch, rec.proj = i, {}
                    rec.on_output(i, prober.forward(model, batch))
                    for k, (kind, o) in enumerate(terms):
                        proj = torch.cat(rec.proj[o])  # an observer that runs twice per pass is recorded twice
                        share = grad_of_projection[(kind, o)][offset[o] : offset[o] + proj.shape[0]].to(proj)
                        current.clear()
                        current.update(out[(kind, o)])
                        torch.autograd.backward(
                            (proj * share).sum(), inputs=list(weights.values()), retain_graph=k < len(terms) - 1
                        )
                    for o in observers:
                        offset[o] += sum(p.shape[0] for p in rec.proj[o])
                    if on_batch is not None:
                        on_batch(1)
        finally:
            rec.remove()
            for h in hooks:
                h.remove()
            for p, flag in flags.items():
                p.requires_grad_(flag)
            for n, w in weights.items():
                w.grad = grads[n]
        return out


class _SkippedHead(torch.nn.Module):
    """Stands in for the LM head during probes: records its input, returns zeros of the logits' shape."""

    def __init__(self, head: torch.nn.Module, recorder: _Recorder):
        super().__init__()
        self.out_features, self.recorder = head.weight.shape[0], recorder

    def forward(self, x, *args, **kwargs):
        if OUTPUT in self.recorder.observers:
            self.recorder._record(OUTPUT, x)
        return torch.zeros((), dtype=x.dtype, device=x.device).expand(*x.shape[:-1], self.out_features)


def _float32_math(device: torch.device):
    """Projections and MI estimates stay in float32 under a caller's `torch.autocast`: in bfloat16 the
    estimators' rounding swamps the small information changes a probe makes (NaN scores)."""
    return torch.autocast(device.type, enabled=False)


def _bucket(y: torch.Tensor, classes: int) -> torch.Tensor:
    """Keep the `classes - 1` most frequent values as their own class; the rest share the last class."""
    values, counts = torch.unique(y, return_counts=True)
    top = values[torch.argsort(counts, descending=True, stable=True)[: classes - 1]]
    mapping = {int(v): i for i, v in enumerate(top.tolist())}
    return torch.tensor([mapping.get(int(v), classes - 1) for v in y.tolist()], dtype=torch.long)


def _first_input(args, kwargs) -> torch.Tensor:
    if args:
        return args[0]
    return kwargs.get("hidden_states", next(v for v in kwargs.values() if isinstance(v, torch.Tensor)))


def _model_input(batch) -> torch.Tensor:
    if isinstance(batch, Mapping):
        for key in ("pixel_values", "input_values", "inputs_embeds", "input_ids"):
            if key in batch:
                return batch[key]
        return next(v for v in batch.values() if isinstance(v, torch.Tensor))
    return batch[0] if isinstance(batch, (tuple, list)) else batch
