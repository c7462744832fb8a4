"""Ask vLLM itself whether it accepts a compressed-tensors export (no GPU needed).

    bash benchmarks/vllm_venv.sh                       # once: vLLM in /tmp/vllm-venv (never a project dependency)
    python benchmarks/vllm_check.py EXPORT_DIR          # an `infoq export --target vllm` folder
    python benchmarks/vllm_check.py --demo              # tiny Llama exports at 3 and 4 bits, then the check
    flock /tmp/infoq-heavy.lock python benchmarks/vllm_check.py --smollm2   # SmolLM2-135M at 3.0 and 4.0 bits

Run with the project's python: it reads the export, computes each layer's reference weight with the
project's compressed-tensors ((q - zp) * scale from the stored tensors alone), and runs itself again under
the vLLM venv's python (`--vllm-python`), which

1. builds vLLM's `CompressedTensorsConfig.from_config` from the export's quantization_config and asks
   `get_scheme` for every layer vLLM builds (q/k/v and gate/up fused, as vLLM's Llama does), and for
   each shard alone, so that fused shards with different schemes are caught (vLLM itself keeps the
   first shard's);
2. has the scheme create its parameters (`create_weights`, batch-invariant mode, so no CUDA kernel is
   picked) and compares their shapes and dtypes with the fused checkpoint tensors;
3. loads the tensors and runs the scheme's own `apply_weights` (its batch-invariant path: vLLM's
   dequantization, the final matmul done by torch on CPU) against x @ reference.T, for widths 2, 4, 8
   where that path's unpacking (vLLM's pinned compressed-tensors) reads the dense packing;
4. reports which CUDA kernel vLLM's rules would pick (Marlin's types and group sizes, else Humming).

Exit status 0 when every layer passes. The GPU kernels themselves are not run here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

FUSED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
DEFAULT_VLLM_PYTHON = "/tmp/vllm-venv/bin/python"


# ----------------------------------------------------------------------------- project side
def reference_weights(export_dir: Path) -> dict:
    """{layer: float32 weight} from the export's own tensors, decoded with compressed-tensors' unpacking."""
    import torch
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from safetensors.torch import load_file

    qc = json.loads((export_dir / "config.json").read_text())["quantization_config"]
    state = load_file(export_dir / "model.safetensors")
    refs = {}
    for group in qc["config_groups"].values():
        w = group["weights"]
        for name in group["targets"]:
            out, fan_in = state[f"{name}.weight_shape"].tolist()
            q = unpack_from_int32(state[f"{name}.weight_packed"], w["num_bits"], torch.Size([out, fan_in]))
            scale = state[f"{name}.weight_scale"].float()
            zp = torch.zeros_like(scale)
            if not w["symmetric"]:
                zp = unpack_from_int32(state[f"{name}.weight_zero_point"], w["num_bits"], scale.shape, packed_dim=0)
            groups = scale.shape[1]
            weight = (q.float().view(out, groups, -1) - zp.float().unsqueeze(-1)) * scale.unsqueeze(-1)
            refs[name] = weight.reshape(out, fan_in)
    return refs


def check(export_dir: Path, vllm_python: str) -> int:
    import torch

    if not Path(vllm_python).is_file():
        print(f"{vllm_python} not found; build it with `bash benchmarks/vllm_venv.sh`", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        ref_path = Path(tmp) / "reference.pt"
        torch.save(reference_weights(export_dir), ref_path)
        env = dict(os.environ, VLLM_BATCH_INVARIANT="1", PYTHONPATH="")
        return subprocess.run(
            [vllm_python, __file__, "--inside-vllm", str(export_dir), str(ref_path)], env=env, cwd=tmp
        ).returncode


def demo(vllm_python: str) -> int:
    """Tiny Llama (tests/helpers/models.py), fused groups tied, exported for vLLM at 3 and 4 bits, both schemes."""
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    from infoq_hf import quantizable_layers, quantize_model
    from infoq_hf.export import export_compressed_tensors
    from tests.helpers.models import tiny_llama

    status = 0
    with tempfile.TemporaryDirectory() as tmp:
        for bits in (3, 4):
            for symmetric in (True, False):
                model = tiny_llama()
                names = [n for n in quantizable_layers(model) if n != "lm_head"]
                # o_proj and down_proj (unfused) one width up: a mixed policy whose fused groups agree
                policy = {n: bits + (n.endswith(("o_proj", "down_proj"))) for n in names}
                quantize_model(model, policy, group_size=32, symmetric=symmetric)
                out = export_compressed_tensors(model, Path(tmp) / f"w{bits}-{symmetric}", target="vllm")
                print(f"== {bits}-bit mix, {'symmetric' if symmetric else 'asymmetric'}")
                status |= check(out, vllm_python)
    return status


def smollm2(vllm_python: str, keep: Path | None) -> int:
    """SmolLM2-135M-Instruct (benchmarks' asset): data-free search (weight_mse, bits 2/3/4/8, group 64),
    ILP allocation at 3.0 and 4.0 average bits under `vllm_allocation_constraints` (fused groups tied),
    packed asymmetric, exported with target="vllm" (tokenizer and chat template copied), then checked."""
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    import torch
    from transformers import AutoModelForCausalLM

    from benchmarks.assets.loaders import smollm2_dir
    from infoq_hf import Budget, allocate, quantize_model, search
    from infoq_hf.export import export_compressed_tensors
    from infoq_hf.vllm_rules import vllm_allocation_constraints

    folder = smollm2_dir()

    def fresh():
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    table = search(
        fresh(), None, bits=[2, 3, 4, 8], method="weight_mse", group_size=64, skip_modules=["lm_head"], progress=False
    )
    constraints = vllm_allocation_constraints(table.layers, symmetric=False)
    status = 0
    with tempfile.TemporaryDirectory() as tmp:
        for avg_bits in (3.0, 4.0):
            policy = allocate(
                table,
                Budget(avg_bits=avg_bits),
                tie=constraints["tie"],
                bits=[b for b in table.bits if b in constraints["bits"]],
                progress=False,
            )
            widths = {n: policy[n].w_bits for n in table.layers}
            model = quantize_model(fresh(), widths, group_size=64, skip_modules=["lm_head"])
            out = export_compressed_tensors(
                model, (keep or Path(tmp)) / f"smollm2-{avg_bits}-vllm", target="vllm", tokenizer_dir=folder
            )
            counts = {b: sum(1 for w in widths.values() if w == b) for b in sorted(set(widths.values()))}
            print(f"== SmolLM2-135M at {avg_bits} average bits (layers per width {counts}): {out}")
            status |= check(out, vllm_python)
    return status


# ----------------------------------------------------------------------------- vLLM side
def inside_vllm(export_dir: Path, ref_path: Path) -> int:
    import torch
    import vllm
    from safetensors.torch import load_file
    from vllm.model_executor.layers.quantization.compressed_tensors import compressed_tensors as ct_mod
    from vllm.model_executor.layers.quantization.compressed_tensors.schemes import compressed_tensors_wNa16 as wna16
    from vllm.model_executor.layers.quantization.utils.marlin_utils import MARLIN_SUPPORTED_GROUP_SIZES
    from vllm.scalar_type import scalar_types

    wna16.matmul_batch_invariant = torch.matmul  # the batch-invariant matmul is a GPU kernel; torch's on CPU
    _single_process_parallel_state()
    qc = json.loads((export_dir / "config.json").read_text())["quantization_config"]
    config = ct_mod.CompressedTensorsConfig.from_config(qc)
    config.packed_modules_mapping = FUSED
    state = load_file(export_dir / "model.safetensors")
    refs = torch.load(ref_path)
    marlin_types = {True: [scalar_types.uint4b8, scalar_types.uint8b128], False: [scalar_types.uint4]}

    layers: dict[str, list[str]] = {}
    for name in refs:
        parent, _, leaf = name.rpartition(".")
        fused = next((f for f, parts in FUSED.items() if leaf in parts), None)
        if fused and all(f"{parent}.{p}" in refs for p in FUSED[fused]):
            layers.setdefault(f"{parent}.{fused}", [f"{parent}.{p}" for p in FUSED[fused]])
        else:
            layers[name] = [name]
    failures = 0
    print(f"vLLM {vllm.__version__}: {len(layers)} layers ({len(refs)} checkpoint layers)")
    for vname, shards in layers.items():
        try:
            scheme = config.get_scheme(layer=torch.nn.Module(), layer_name=vname)
            keys = {
                (s.num_bits, s.group_size, s.symmetric)
                for s in (config.get_scheme(layer=torch.nn.Module(), layer_name=sh) for sh in shards)
            }
            if len(keys) > 1:
                raise ValueError(f"shards have different schemes {sorted(keys)}; vLLM would use the first")
            result = _run_layer(scheme, shards, state, refs)
            kernel = (
                "Marlin"
                if scheme.quant_type in marlin_types[scheme.symmetric]
                and scheme.group_size in MARLIN_SUPPORTED_GROUP_SIZES
                else "Humming"
            )
            print(
                f"ok   {vname}: {type(scheme).__name__} {scheme.num_bits}-bit group={scheme.group_size} "
                f"{'sym' if scheme.symmetric else 'asym'} ({scheme.quant_type}), CUDA kernel {kernel}; {result}"
            )
        except Exception as error:  # report every layer, then fail
            failures += 1
            print(f"FAIL {vname}: {type(error).__name__}: {error}")
    print(f"{len(layers) - failures}/{len(layers)} layers accepted by vLLM {vllm.__version__}")
    return 1 if failures else 0


def _single_process_parallel_state() -> None:
    """vLLM's parameters record the tensor-parallel rank and size; here one process: rank 0 of 1 (vLLM's own
    initialisation needs a GPU or its CPU build to infer a device)."""
    from vllm.model_executor import parameter

    parameter.get_tensor_model_parallel_rank = lambda: 0
    parameter.get_tensor_model_parallel_world_size = lambda: 1


def _run_layer(scheme, shards, state, refs) -> str:
    import torch

    outs = [int(state[f"{s}.weight_shape"][0]) for s in shards]
    fan_in = int(state[f"{shards[0]}.weight_shape"][1])
    layer = torch.nn.Module()
    scheme.create_weights(
        layer,
        output_size=sum(outs),
        input_size=fan_in,
        output_partition_sizes=outs,
        input_size_per_partition=fan_in,
        params_dtype=torch.float32,
        weight_loader=None,
    )
    for leaf in ("weight_packed", "weight_scale", "weight_zero_point"):
        if not hasattr(layer, leaf):
            continue
        stored = torch.cat([state[f"{s}.{leaf}"] for s in shards], dim=0)
        param = getattr(layer, leaf)
        if stored.shape != param.shape or (leaf != "weight_scale" and stored.dtype != param.dtype):
            raise ValueError(
                f"{leaf}: checkpoint {tuple(stored.shape)} {stored.dtype}, vLLM allocates "
                f"{tuple(param.shape)} {param.dtype}"
            )
        param.data.copy_(stored)
    layer.weight_shape.data.copy_(torch.tensor([sum(outs), fan_in]))
    scheme.process_weights_after_loading(layer)
    if scheme.num_bits not in (2, 4, 8):
        return "shapes match (outputs not compared: vLLM's pinned compressed-tensors unpacks the older layout)"
    x = torch.randn(3, fan_in, generator=torch.Generator().manual_seed(0))
    ours = scheme.apply_weights(layer, x, None)
    reference = x @ torch.cat([refs[s] for s in shards], dim=0).t()
    err = (ours - reference).abs().max().item()
    if err > 1e-4 * max(1.0, reference.abs().max().item()):
        raise ValueError(f"apply_weights differs from the reference by {err:.3g}")
    return f"shapes match, outputs match (max error {err:.1e})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", nargs="?", type=Path)
    parser.add_argument("reference", nargs="?", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--demo", action="store_true", help="export a tiny Llama at 3 and 4 bits and check it")
    parser.add_argument("--smollm2", action="store_true", help="SmolLM2-135M at 3.0 and 4.0 bits, then the check")
    parser.add_argument("--keep", type=Path, help="with --smollm2: write the exports into this folder")
    parser.add_argument("--vllm-python", default=DEFAULT_VLLM_PYTHON, help="python of the vLLM venv")
    parser.add_argument("--inside-vllm", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inside_vllm:
        return inside_vllm(args.export_dir, args.reference)
    if args.demo:
        return demo(args.vllm_python)
    if args.smollm2:
        return smollm2(args.vllm_python, args.keep)
    if args.export_dir is None:
        parser.error("give an export folder or --demo")
    return check(args.export_dir, args.vllm_python)


if __name__ == "__main__":
    sys.exit(main())
