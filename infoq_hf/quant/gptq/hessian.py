"""The input Hessian H = 2 X^T X / N of a layer, accumulated from forward pre-hooks, for GPTQ."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class HessianAccumulator:
    """Sums 2 x x^T over a layer's inputs; Conv2d inputs are unfolded into patches, one Hessian per
    conv group. Products are float32 over at most `ROWS` rows each, summed in float64 (float64
    products cost 2-4x more and change nothing at these row counts). Linear layers fed the very same
    tensor (q/k/v, gate/up) share one product through `memo`. Use it as a forward pre-hook."""

    ROWS = 4096

    def __init__(self, name: str, layer: nn.Module, memo: dict | None = None):
        self.name, self.layer = name, layer
        self.is_conv = isinstance(layer, nn.Conv2d)
        self.memo = {} if memo is None else memo
        self.sum: torch.Tensor | None = None
        self.count = 0

    def __call__(self, module, args):
        self.add(args[0])

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        if not self.is_conv and self.memo.get("x") is x:  # holding x keeps its identity unique
            h, n = self.memo["h"], self.memo["n"]
        else:
            if not torch.isfinite(x).all():
                raise ValueError(
                    f"layer {self.name!r}: a calibration input contains NaN or inf; GPTQ needs finite "
                    "activations (check the model in float and the calibration batches)"
                )
            h, n = None, 0
            for chunk in x.split(8) if self.is_conv else [x.reshape(-1, x.shape[-1])]:
                rows = self._rows(chunk)  # [groups, n, d] float32
                for r in range(0, rows.shape[1], self.ROWS):
                    part = rows[:, r : r + self.ROWS]
                    prod = (2.0 * part.transpose(1, 2) @ part).double()
                    h = prod if h is None else h + prod
                n += rows.shape[1]
            if not self.is_conv:
                self.memo.update(x=x, h=h, n=n)
        self.sum = h.clone() if self.sum is None else self.sum + h
        self.count += n

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        if not self.is_conv:
            return x.float()[None]
        c = self.layer
        x = F.pad(x.float(), conv_padding(c), mode="constant" if c.padding_mode == "zeros" else c.padding_mode)
        patches = F.unfold(x, c.kernel_size, dilation=c.dilation, stride=c.stride)  # [N, C*kh*kw, L]
        n, _, length = patches.shape
        patches = patches.reshape(n, c.groups, -1, length).permute(1, 0, 3, 2)  # [groups, N, L, d]
        return patches.reshape(c.groups, n * length, -1)

    def hessian(self) -> torch.Tensor:
        """The mean Hessian [groups, d, d] (groups = 1 except for grouped convs)."""
        if self.count == 0:
            raise ValueError(
                f"no calibration data reached layer {self.name!r}; check the batches and the forward "
                "function (is the layer used by the model's forward pass?)"
            )
        return self.sum / self.count


def conv_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding of a Conv2d, explicit also for padding='same'/'valid'."""
    if conv.padding == "valid":
        return (0, 0, 0, 0)
    if conv.padding == "same":
        pads = []
        for k, d in zip(reversed(conv.kernel_size), reversed(conv.dilation)):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)
    ph, pw = conv.padding
    return (pw, pw, ph, ph)


def output_error(delta: torch.Tensor, hessian: torch.Tensor) -> float:
    """tr(D H D^T) summed over conv groups: the output error of a weight change `delta` [out, ...]
    (oriented as [out, in...]) on inputs of Hessian `hessian` [groups, d, d]. The product is float32
    (float64 costs several times more and moves the error by about 1e-6 relative), its entries
    summed in float64."""
    groups = hessian.shape[0]
    d = delta.reshape(groups, delta.shape[0] // groups, -1).float()
    return float(((d @ hessian.float()) * d).double().sum())


__all__ = ["HessianAccumulator", "conv_padding", "output_error"]
