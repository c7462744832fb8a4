"""Compiled CPU kernels for packed layers: float32 ones on the bit stream, and a bfloat16 rebuild.

A float32 model's packed layers (what a user gets from a float32 checkpoint or `torch_dtype=float32`)
cannot take torch's int4 kernel (23-29x slower in float32, `benchmarks.kernel_dtypes`). These kernels
(`csrc/packed_linear.cpp`) take them instead, on the codes as they are stored at their own width:

- `linear`: y = x @ W^T for few input rows (decode), dequantizing each weight row once into a float
  buffer and dotting it with every input row; memory traffic is the packed bytes, not float32's four
  bytes per weight.
- `dequantize`: W = (c - zero) * scale in float32, bit-identical to `quantizer.dequantize_codes`, for
  many rows (prefill: dequantize, then one float32 matmul) and every reader of `layer.weight`.
- `dequantize_int4_layout_bf16`: in bfloat16 models, the weight torch's int4 kernel multiplies by,
  rebuilt from its layout in one pass for prefill's dense matmul, bit-identical to
  `kernels.dense_weight_from_int4_layout`'s pure-PyTorch path.

Both equal the exact path up to the order of float32 additions (`linear`) or exactly (`dequantize`).
They are built on first use with torch's C++ extension loader (a C++ compiler and `ninja`; about 30 s,
once per machine and source, cached by torch); where that fails, or with `INFOQ_HF_CPU_KERNELS=0`,
the layers keep the pure-PyTorch path and a warning says why once. Rows must hold a multiple of 8 codes
and groups too (every row then starts on a byte); other layers keep the pure-PyTorch path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import time
import warnings
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "packed_linear.cpp"
# Below this many input rows `linear` beats dequantizing and a float32 matmul; from it on the matmul wins
# (`python -m benchmarks.kernel_dtypes`).
LINEAR_MAX_ROWS = 8
DISABLE_ENV = "INFOQ_HF_CPU_KERNELS"

_module = None
_failure: str | None = None


def _cpu_identity() -> str:
    """The build is tuned for the CPU it runs on (-march=native): a cache shared by other CPUs must not reuse it."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = ""
    return platform.machine() + platform.processor() + flags


def load():
    """The compiled module, or None (the reason is warned about once)."""
    global _module, _failure
    if _module is not None or _failure is not None:
        return _module
    if os.environ.get(DISABLE_ENV, "1") == "0":
        _failure = f"{DISABLE_ENV}=0"
        return None
    source = SOURCE.read_text()
    tag = hashlib.sha256((source + _cpu_identity() + torch.__version__).encode()).hexdigest()[:12]
    try:
        from torch.utils.cpp_extension import load_inline

        started = time.perf_counter()
        logger.info("infoq_hf: loading the CPU kernels for packed layers (built on first use, ~30 s)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no CUDA runtime found" and the like: irrelevant to a CPU build
            _module = load_inline(
                f"infoq_hf_stream_{tag}",
                source,
                functions=["packed_linear_f32", "dequantize_f32", "dequantize_int4_layout_bf16"],
                extra_cflags=["-O3", "-march=native", "-fopenmp"],
                extra_ldflags=["-fopenmp"],
            )
        if time.perf_counter() - started > 5:  # a build, not a cached load
            logger.warning(
                "infoq_hf: built the CPU kernels for packed layers in %.0f s (cached for later runs)",
                time.perf_counter() - started,
            )
    except Exception as err:  # no compiler, no ninja, an unsupported platform: the exact path still works
        _failure = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
        warnings.warn(
            f"infoq_hf: the CPU kernels for packed layers could not be built ({_failure}); float32 packed "
            "layers and bfloat16 prefill take the slower pure-PyTorch path. Install a C++ compiler and `ninja` "
            f"to enable them, or set {DISABLE_ENV}=0 to silence this.",
            RuntimeWarning,
            stacklevel=3,
        )
    return _module


def applies(packed: torch.Tensor, shape: tuple[int, int], group_size: int | None) -> bool:
    """Whether the kernels take a [out, in] weight whose stream is `packed` (on CPU, eager mode)."""
    fan_in = shape[1]
    group = fan_in if group_size is None else group_size
    return (
        packed.device.type == "cpu"
        and not packed.is_meta
        and fan_in % 8 == 0
        and group % 8 == 0
        and not torch.compiler.is_compiling()
        and load() is not None
    )


def linear(x2: torch.Tensor, packed, scale, zero_point, bits: int, group: int) -> torch.Tensor:
    """x2 [rows, in] (float32) @ W^T."""
    zero = None if zero_point is None else zero_point.contiguous()
    return _module.packed_linear_f32(x2.contiguous(), packed.contiguous(), scale.contiguous(), zero, bits, group)


def dequantize_int4_layout_bf16(packed, scale_zero, group: int, n: int) -> torch.Tensor:
    """The [n, width] bfloat16 weight of an int4 kernel layout (`kernels.py`), before the [h | l] halves of a
    split layout are summed."""
    return _module.dequantize_int4_layout_bf16(packed.contiguous(), scale_zero.contiguous(), group, n)


def dequantize(packed, scale, zero_point, bits: int, group: int, fan_in: int) -> torch.Tensor:
    """W [out, in] in float32."""
    zero = None if zero_point is None else zero_point.contiguous()
    return _module.dequantize_f32(packed.contiguous(), scale.contiguous(), zero, bits, group, fan_in)
