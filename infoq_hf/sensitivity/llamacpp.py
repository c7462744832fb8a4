"""llama.cpp's K-quant mixes (Q4_K_M, Q3_K_M) as allocation scores that follow any budget.

llama.cpp's `llama_tensor_get_type` (src/llama-quant.cpp) gives a preset's base type to most
tensors and more bits to a few, by tensor role and block index. For a dense Llama-like model:

  Q4_K_M (base Q4_K):  attn_v and ffn_down -> Q6_K in the blocks `use_more_bits` picks (the first
                       and last eighth of the blocks and every third block in between); attn_qkv
                       -> Q5_K; the output head -> Q6_K.
  Q3_K_M (base Q3_K):  attn_v -> Q5_K in the first two blocks, Q4_K elsewhere; ffn_down -> Q5_K in
                       the first sixteenth of the blocks, Q4_K elsewhere; attn_output and attn_qkv
                       -> Q4_K; the output head -> Q6_K.

Here a tensor's preference is the bits its preset type holds over the base type, delta_l (ggml's
bits per weight: Q3_K 3.4375, Q4_K 4.5, Q5_K 5.5, Q6_K 6.5625), and its score is

  S(l, b) = 4^delta_l * (n_l / N) * t2(l, b)

(`size_only`'s score times 4^delta_l). One more bit divides a uniform quantizer's squared error by
about 4, so a tensor the preset favours by delta bits costs at b bits about what a base tensor costs
at b - delta: under any budget the ILP keeps the favoured tensors about delta bits above the rest,
the preset's shape scaled to the budget. At the budget of the preset's own shape it reproduces it.
Roles are read from Hugging Face module names; a model with no such names scores as `size_only`.
"""

from __future__ import annotations

from .probe import find_blocks

PRESETS = ("q4_k_m", "q3_k_m")
GGML_BITS = {"Q3_K": 3.4375, "Q4_K": 4.5, "Q5_K": 5.5, "Q6_K": 6.5625}
BASE_TYPE = {"q4_k_m": "Q4_K", "q3_k_m": "Q3_K"}

# Hugging Face module names (the last path component) of the roles llama.cpp's rules name.
ROLES = {
    "attn_v": ("v_proj", "value"),
    "attn_qkv": ("qkv_proj", "query_key_value", "c_attn", "Wqkv", "in_proj"),
    "attn_output": ("o_proj", "out_proj"),
    "ffn_down": ("down_proj", "dense_4h_to_h", "w2", "fc2"),
    "output": ("lm_head",),
}


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of blocks: the first and last eighth, and every third block in between."""
    eighth = n_layers // 8
    return i_layer < eighth or i_layer >= 7 * n_layers // 8 or (i_layer - eighth) % 3 == 2


def tensor_role(name: str) -> str | None:
    leaf = name.rsplit(".", 1)[-1]
    return next((role for role, leaves in ROLES.items() if leaf in leaves), None)


def block_position(name: str, blocks: dict[str, list[str]]) -> tuple[int, int] | None:
    """(index of the block holding layer `name`, blocks in its stack), or None outside every stack."""
    for children in blocks.values():
        for i, child in enumerate(children):
            if name.startswith(child + "."):
                return i, len(children)
    return None


def preset_type(preset: str, role: str | None, position: tuple[int, int] | None) -> str:
    """The ggml type llama.cpp's `preset` gives a tensor of `role` at block `position` (dense models)."""
    base = BASE_TYPE[preset]
    if role == "output":
        return "Q6_K"
    if preset == "q4_k_m":
        if role in ("attn_v", "ffn_down") and position is not None and use_more_bits(*position):
            return "Q6_K"
        return "Q5_K" if role == "attn_qkv" else base
    if role == "attn_v":
        return "Q5_K" if position is not None and position[0] < 2 else "Q4_K"
    if role == "ffn_down":
        return "Q5_K" if position is not None and position[0] < position[1] // 16 else "Q4_K"
    return "Q4_K" if role in ("attn_output", "attn_qkv") else base


def stacks(model) -> dict[str, list[str]]:
    """The model's block stacks: container name -> its blocks' names, in order (`quant.apply.find_blocks`)."""
    out: dict[str, list[str]] = {}
    for block in find_blocks(model):
        container = block.rpartition(".")[0]
        out.setdefault(container, []).append(block)
    return out


def preset_types(model, names, preset: str, heads=()) -> dict[str, str]:
    """The ggml type `preset` gives each layer in `names`; `heads`: layers that hold the output head (an
    input embedding tied to it), which llama.cpp quantizes as the head."""
    if preset not in PRESETS:
        raise ValueError(f"unknown llama.cpp preset {preset!r}; choose one of {PRESETS}")
    blocks = stacks(model)
    return {
        n: preset_type(preset, "output" if n in heads else tensor_role(n), block_position(n, blocks)) for n in names
    }


def preference_weights(types: dict[str, str], preset: str) -> dict[str, float]:
    """4^delta_l, delta_l = the bits a layer's preset type holds over the preset's base type."""
    base = GGML_BITS[BASE_TYPE[preset]]
    return {n: 4.0 ** (GGML_BITS[t] - base) for n, t in types.items()}


__all__ = [
    "BASE_TYPE",
    "GGML_BITS",
    "PRESETS",
    "preference_weights",
    "preset_type",
    "preset_types",
    "tensor_role",
    "use_more_bits",
]
