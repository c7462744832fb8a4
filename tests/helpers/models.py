"""The tiny-model builders the tests share.

Every tiny transformers / timm model a test builds comes from a builder here, built from a config (no
network). A builder seeds torch with `seed` right before it initialises the weights (`seed=None` leaves
the global generator as the test has it) and returns the model in eval mode. The defaults are the shapes
most tests use; a test passes what it varies (layers, widths, vocabulary, tied embeddings, ...), and any
other keyword goes to the config as it is. Tests import them: `from tests.helpers.models import tiny_llama`.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
import torch.nn as nn


def _seed(seed: int | None) -> None:
    if seed is not None:
        torch.manual_seed(seed)


# ----------------------------------------------------------------------------- Llama
def tiny_llama_config(
    *,
    vocab: int = 128,
    hidden: int = 64,
    intermediate: int = 128,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    pad_token_id: int | None = 0,
    **config,
):
    """A 2-layer, 64-wide Llama config with grouped-query attention (4 heads, 2 key/value heads)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        pad_token_id=pad_token_id,
        **config,
    )


def tiny_llama(*, seed: int | None = 0, **config):
    """`LlamaForCausalLM` of `tiny_llama_config(**config)`."""
    from transformers import LlamaForCausalLM

    cfg = tiny_llama_config(**config)
    _seed(seed)
    return LlamaForCausalLM(cfg).eval()


def tiny_packed_llama(*, symmetric: bool = False):
    """`tiny_llama()` with every layer but lm_head packed, at each width 2..8 in turn, in groups of 32."""
    from infoq_hf import quantizable_layers, quantize_model

    model = tiny_llama()
    names = [n for n in quantizable_layers(model) if n != "lm_head"]
    return quantize_model(model, {n: 2 + i % 7 for i, n in enumerate(names)}, group_size=32, symmetric=symmetric)


def make_calibration_text(path: Path, seed: int = 0) -> Path:
    """40 lines of words w0..w149, written to `path`."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(150)]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 60))) for _ in range(40)]
    path.write_text("\n".join(lines))
    return path


def make_tiny_llama(directory: Path) -> Path:
    """A 2-layer Llama (vocabulary 256) saved with a word-level tokenizer trained locally on
    `make_calibration_text`; `AutoTokenizer.from_pretrained(directory)` works."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    text = make_calibration_text(directory.parent / f"{directory.name}-vocab.txt").read_text()
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        text.splitlines(), trainers.WordLevelTrainer(vocab_size=250, special_tokens=["<pad>", "<unk>", "</s>"])
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", eos_token="</s>", pad_token="<pad>"
    ).save_pretrained(directory)
    tiny_llama(vocab=256, eos_token_id=2, bos_token_id=None).save_pretrained(directory)
    return directory


# ----------------------------------------------------------------------------- other decoder architectures
DECODERS = {  # name -> (config class, model class, config beyond the shared sizes; None: GPT-2's own names)
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"head_dim": 16, "sliding_window": 8}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"pad_token_id": 0}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 8}),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", None),
}


def tiny_decoder(architecture: str, *, vocab: int = 96, seed: int | None = 0):
    """A 2-layer, 64-wide causal LM of one of `DECODERS` (4 heads, 2 key/value heads where it has them)."""
    import transformers

    config_class, model_class, extra = DECODERS[architecture]
    if extra is None:
        config = getattr(transformers, config_class)(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=64)
    else:
        sizes = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
        config = getattr(transformers, config_class)(
            vocab_size=vocab, num_key_value_heads=2, max_position_embeddings=64, **sizes, **extra
        )
    _seed(seed)
    return getattr(transformers, model_class)(config).eval()


# ----------------------------------------------------------------------------- GPT-2, BERT, ViT
def tiny_gpt2_config(
    *, vocab: int = 64, hidden: int = 32, layers: int = 1, heads: int = 2, positions: int = 32, **config
):
    """A 1-layer, 32-wide GPT-2 config (its projections are transformers' transposed `Conv1D`)."""
    from transformers import GPT2Config

    return GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=positions, **config)


def tiny_gpt2(*, seed: int | None = 0, lm_head: bool = True, **config):
    """`GPT2LMHeadModel` (or the bare `GPT2Model` with `lm_head=False`) of `tiny_gpt2_config(**config)`."""
    from transformers import GPT2LMHeadModel, GPT2Model

    cfg = tiny_gpt2_config(**config)
    _seed(seed)
    return (GPT2LMHeadModel if lm_head else GPT2Model)(cfg).eval()


def tiny_bert_config(
    *, vocab: int = 256, hidden: int = 128, layers: int = 2, heads: int = 4, intermediate: int = 256, **config
):
    """A 2-layer, 128-wide BERT config."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        **config,
    )


def tiny_vit_config(
    *,
    hidden: int = 8,
    layers: int = 1,
    heads: int = 2,
    intermediate: int = 8,
    image_size: int = 32,
    patch_size: int = 16,
    num_labels: int = 3,
    **config,
):
    """A 1-layer, 8-wide ViT classifier config on 32x32 images."""
    from transformers import ViTConfig

    return ViTConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        image_size=image_size,
        patch_size=patch_size,
        num_labels=num_labels,
        **config,
    )


def tiny_vit(*, seed: int | None = 0, **config):
    """`ViTForImageClassification` of `tiny_vit_config(**config)`."""
    from transformers import ViTForImageClassification

    cfg = tiny_vit_config(**config)
    _seed(seed)
    return ViTForImageClassification(cfg).eval()


# ----------------------------------------------------------------------------- timm
def tiny_timm(
    architecture: str = "test_resnet",
    *,
    num_classes: int = 10,
    seed: int | None = 0,
    directory: Path | None = None,
    **create_kwargs,
) -> nn.Module:
    """A randomly initialised timm model (`test_resnet`: timm's own tiny test net), saved with
    `timm.models.save_for_hf` into `directory` when one is given."""
    import timm

    _seed(seed)
    model = timm.create_model(architecture, pretrained=False, num_classes=num_classes, **create_kwargs).eval()
    if directory is not None:
        from timm.models import save_for_hf

        directory.mkdir(parents=True, exist_ok=True)
        save_for_hf(model, str(directory))
    return model


# ----------------------------------------------------------------------------- a small CNN and its data
def small_cnn() -> nn.Sequential:
    """Three convolutions and a 4-class head on 1x12x12 inputs (see `labelled_batches`)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    ).eval()


def labelled_batches(n_batches=3, size=32, seed=0):
    """(x, y) batches for `small_cnn`, with labels the model can learn."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        x = torch.randn(size, 1, 12, 12, generator=gen)
        y = (x.mean(dim=(1, 2, 3)) > 0).long() + 2 * (x[:, 0, :6].mean(dim=(1, 2)) > 0).long()  # learnable labels
        out.append((x, y))
    return out


def lm_batches(vocab=96):
    """Two seeded batches of 4 x 24 token ids below `vocab`."""
    gen = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, vocab, (4, 24), generator=gen)} for _ in range(2)]
