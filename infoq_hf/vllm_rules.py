"""What vLLM's compressed-tensors loader accepts, as rules read from the source of vLLM 0.33.0 (VLLM_VERSION).

Read from `vllm/model_executor/layers/quantization/compressed_tensors/` (compressed_tensors.py, utils.py,
schemes/compressed_tensors_wNa16.py) and the mixed-precision kernels it picks from
(`vllm/model_executor/kernels/linear/mixed_precision/`: marlin.py, machete.py, humming.py):

- A weight-only int layer becomes the WNA16 scheme when its config group is `pack-quantized`, static,
  without input activations, with strategy "group" (group_size > 0) or "channel"; "block" and "tensor"
  find no scheme. num_bits 2..8, symmetric (types uint{b}b{2^(b-1)}) or with zero points (uint{b}).
- Tensors per layer: weight_packed int32 [out, ceil(in * b / 32)] (a dense bit stream per row),
  weight_scale [out, in / group] (group must divide in), weight_shape int64 [2], and when asymmetric
  weight_zero_point int32 [ceil(out * b / 32), in / group]: the zero points packed along the OUTPUT dim.
- vLLM runs q/k/v and gate/up as one fused matmul. Its target matching takes the first shard's scheme
  for the fused layer without comparing the others (a mismatch fails later, at weight loading), and it
  refuses a fused layer whose shards are partly ignored. Packed zero points of a fused layer are sliced
  per shard at out * b / 32 words, so each shard's out * b must be a multiple of 32.
- CUDA kernels: Marlin takes uint4b8 / uint8b128 (symmetric) and uint4 (zero points) with group sizes
  -1 (channel), 32, 64, 128; Machete (Hopper only) uint4b8 / uint8b128 / uint4 / uint8 with -1, 64, 128;
  Humming (humming-kernels, a vLLM dependency) takes any int width on CUDA, so every 2..8-bit layer has a
  kernel in this version. kernels="marlin" restricts a check to what Marlin runs (on every CUDA GPU
  from Turing on; the mature fast path).
Checked by the rules only; `benchmarks/vllm_check.py` asks vLLM itself where it is installed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from .bitwidth import MAX_BITS, MIN_BITS

VLLM_VERSION = "0.33.0"
FUSED_PROJECTIONS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
KERNELS = ("any", "marlin")
MARLIN_GROUP_SIZES = (-1, 32, 64, 128)
_MARLIN_BITS = {True: (4, 8), False: (4,)}  # symmetric -> widths; asymmetric (zero points) -> widths


def fused_groups(names: Iterable[str]) -> list[tuple[str, ...]]:
    """Groups of layer names vLLM fuses into one matmul (q/k/v, gate/up of one block), present in full."""
    names = list(names)
    present = set(names)
    groups = []
    for leaves in FUSED_PROJECTIONS.values():
        parents = sorted({n.rpartition(".")[0] for n in names if n.rpartition(".")[2] == leaves[0]})
        for parent in parents:
            group = tuple(f"{parent}.{leaf}" if parent else leaf for leaf in leaves)
            if all(g in present for g in group):
                groups.append(group)
    return groups


def allowed_bits(kernels: str = "any", symmetric: bool = True) -> tuple[int, ...]:
    """Weight widths vLLM has a kernel for: every width infoq_hf packs, or Marlin's only."""
    _check_kernels(kernels)
    if kernels == "marlin":
        return _MARLIN_BITS[bool(symmetric)]
    return tuple(range(MIN_BITS, MAX_BITS + 1))


def vllm_allocation_constraints(names: Iterable[str], kernels: str = "any", symmetric: bool = True) -> dict:
    """What an allocation must meet for vLLM to run the result: {"tie": the fused groups (one width each),
    "bits": the widths vLLM runs}. Both are `allocate` keywords: `allocate(table, budget,
    **vllm_allocation_constraints(table.layers))` (pass a `bits` subset of the table's widths yourself
    when the table lacks some)."""
    return {"tie": fused_groups(names), "bits": list(allowed_bits(kernels, symmetric))}


def vllm_problems(quantization_config: Mapping, shapes: Mapping[str, tuple], kernels: str = "any") -> list[str]:
    """Everything vLLM would refuse or misread in a compressed-tensors checkpoint, one message per problem
    naming the layer and what to change. `shapes`: {tensor name: shape} of the checkpoint's tensors, except
    `NAME.weight_shape`, given by its value (out_features, in_features); see `checkpoint_shapes`."""
    _check_kernels(kernels)
    problems = []
    qc = quantization_config
    if qc.get("quant_method") != "compressed-tensors":
        return [f"quant_method is {qc.get('quant_method')!r}, not 'compressed-tensors'"]
    schemes: dict[str, dict] = {}
    for group in qc.get("config_groups", {}).values():
        fmt = group.get("format") or qc.get("format")
        for target in group.get("targets", []):
            schemes[target] = dict(
                group.get("weights") or {}, format=fmt, input_activations=group.get("input_activations")
            )
    ignored = set(qc.get("ignore", []))
    for name, scheme in schemes.items():
        problems += _scheme_problems(name, scheme, shapes, kernels)
    for group in fused_groups(list(schemes) + [n for n in ignored if n not in schemes]):
        quantized = [n for n in group if n in schemes]
        if quantized and len(quantized) < len(group):
            problems.append(
                f"fused layers {list(group)}: {sorted(set(group) - set(quantized))} are float but "
                f"{quantized} are quantized; vLLM runs them as one matmul and refuses a partly "
                "quantized one. Quantize all of them or none"
            )
            continue
        if not quantized:
            continue
        keys = {n: _scheme_key(schemes[n]) for n in group}
        if len(set(keys.values())) > 1:
            widths = ", ".join(f"{n.rpartition('.')[2]}={_describe(schemes[n])}" for n in group)
            problems.append(
                f"fused layers {list(group)} have different schemes ({widths}); vLLM runs them as one "
                "matmul with the first one's scheme. Give them one width (tie them in the allocation: "
                "vllm_allocation_constraints)"
            )
        elif not schemes[group[0]].get("symmetric", True):
            bits = schemes[group[0]].get("num_bits")
            odd = [n for n in group if _out(shapes, n) is not None and _out(shapes, n) * bits % 32]
            if odd:
                problems.append(
                    f"fused layers {list(group)}: asymmetric {bits}-bit zero points of {odd} end inside "
                    "a 32-bit word (out_features * bits not a multiple of 32), which vLLM's fused "
                    "loader cannot slice. Use symmetric quantization or another width for them"
                )
    return problems


def checkpoint_shapes(tensors: Mapping) -> dict[str, tuple]:
    """The `shapes` argument of `vllm_problems` from {name: tensor}: each tensor's shape, and the value of
    every `*.weight_shape`."""
    return {
        k: tuple(int(d) for d in (t.tolist() if k.endswith(".weight_shape") else t.shape)) for k, t in tensors.items()
    }


def _scheme_problems(name: str, w: Mapping, shapes: Mapping, kernels: str) -> list[str]:
    bits, strategy, group_size = w.get("num_bits"), w.get("strategy"), w.get("group_size")
    symmetric = w.get("symmetric", True)
    where = f"layer {name!r}"
    if w.get("format") != "pack-quantized":
        return [f"{where}: format {w.get('format')!r}; vLLM's WNA16 scheme reads 'pack-quantized'"]
    if w.get("input_activations"):
        return [
            f"{where}: quantized input activations; vLLM's WNA16 scheme is weight-only. Re-quantize with a_bits=None"
        ]
    if w.get("type", "int") != "int" or w.get("dynamic"):
        return [f"{where}: weights type={w.get('type')!r} dynamic={w.get('dynamic')!r}; WNA16 needs static int weights"]
    if strategy not in ("group", "channel"):
        return [
            f"{where}: strategy {strategy!r}; vLLM's WNA16 scheme takes 'group' or 'channel' only (export with "
            "target='vllm', which writes asymmetric layers as 'group' with packed zero points)"
        ]
    if strategy == "group" and not (isinstance(group_size, int) and group_size > 0):
        return [f"{where}: strategy 'group' without a positive group_size"]
    if w.get("actorder") in ("group", "dynamic"):
        return [f"{where}: actorder {w.get('actorder')!r} is refused by vLLM; use static or no activation ordering"]
    if bits not in allowed_bits(kernels, symmetric):
        runs = "Marlin kernel runs" if kernels == "marlin" else "kernels run"
        return [
            f"{where}: {bits}-bit {'symmetric' if symmetric else 'asymmetric'} weights; vLLM's "
            f"{runs} {list(allowed_bits(kernels, symmetric))} "
            "bits here. Re-allocate with those widths (vllm_allocation_constraints)"
        ]
    gs = -1 if strategy == "channel" else group_size
    if kernels == "marlin" and gs not in MARLIN_GROUP_SIZES:
        return [
            f"{where}: group size {gs}; Marlin takes {list(MARLIN_GROUP_SIZES)} (-1 = per channel). "
            "Re-quantize with group_size 32, 64 or 128"
        ]
    return _tensor_problems(name, bits, gs, symmetric, shapes)


def _tensor_problems(name, bits, gs, symmetric, shapes) -> list[str]:
    where = f"layer {name!r}"
    if f"{name}.weight_shape" not in shapes or f"{name}.weight_packed" not in shapes:
        return [f"{where}: weight_packed / weight_shape missing from the checkpoint"]
    out, fan_in = shapes[f"{name}.weight_shape"]
    group = fan_in if gs == -1 else gs
    if fan_in % group:
        return [f"{where}: group size {group} does not divide in_features {fan_in}; vLLM needs whole groups"]
    expected = {"weight_packed": (out, math.ceil(fan_in * bits / 32)), "weight_scale": (out, fan_in // group)}
    if not symmetric:
        expected["weight_zero_point"] = (math.ceil(out * bits / 32), fan_in // group)
    problems = []
    for leaf, shape in expected.items():
        got = shapes.get(f"{name}.{leaf}")
        if got is None or tuple(got) != shape:
            problems.append(f"{where}: {leaf} has shape {None if got is None else tuple(got)}, vLLM allocates {shape}")
    return problems


def _out(shapes, name):
    shape = shapes.get(f"{name}.weight_shape")
    return None if shape is None else shape[0]


def _scheme_key(w: Mapping) -> tuple:
    return (w.get("num_bits"), w.get("strategy"), w.get("group_size"), w.get("symmetric", True), w.get("format"))


def _describe(w: Mapping) -> str:
    group = "channel" if w.get("strategy") == "channel" else f"g{w.get('group_size')}"
    return f"{w.get('num_bits')}b/{group}/{'sym' if w.get('symmetric', True) else 'asym'}"


def _check_kernels(kernels: str) -> None:
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {list(KERNELS)}, got {kernels!r}")
