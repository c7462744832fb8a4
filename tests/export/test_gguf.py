"""GGUF export: read back with the gguf package's own reader and dequantizers (and transformers' GGUF
loader), every tensor checked against the packed model it came from."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from infoq_hf import quantizable_layers, quantize_model
from infoq_hf.gguf_types import (
    GGML_TYPES,
    exact_type,
    fallback_type,
    gguf_weight_bytes,
    tensor_nbytes,
    width_candidates,
)
from tests.helpers.models import make_calibration_text, make_tiny_llama, tiny_gpt2, tiny_llama

gguf = pytest.importorskip("gguf")

from infoq_hf.gguf import POLICY_KEY, export_gguf, gguf_summary  # noqa: E402


def bpe_tokenizer_folder(folder, vocab: int = 300):
    """A byte-level BPE tokenizer (what llama.cpp's "gpt2" tokenizer model reads) trained on local text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    text = make_calibration_text(folder / "text.txt").read_text()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        text.splitlines(),
        trainers.BpeTrainer(
            vocab_size=vocab, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", chat_template=template)
    fast.save_pretrained(folder)
    return folder


def packed_llama(symmetric: bool, group_size=32, vocab: int = 320):
    """A tiny Llama with every layer but lm_head packed at the widths 2..8 in turn."""
    model = tiny_llama(vocab=vocab)
    names = [n for n in quantizable_layers(model) if n != "lm_head"]
    return quantize_model(
        model, {n: 2 + i % 7 for i, n in enumerate(names)}, group_size=group_size, symmetric=symmetric
    )


def rows_back(array: np.ndarray, name: str, model) -> np.ndarray:
    """Undo llama.cpp's rotary row order of q/k (the inverse of the converter's permutation)."""
    heads = {"attn_q": model.config.num_attention_heads, "attn_k": model.config.num_key_value_heads}
    kind = name.split(".")[-2]
    if kind not in heads:
        return array
    rows, n = array.shape[0], heads[kind]
    order = np.arange(rows).reshape(n, 2, rows // n // 2).swapaxes(1, 2).reshape(-1)
    out = np.empty_like(array)
    out[order] = array
    return out


def half(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float16).float()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return bpe_tokenizer_folder(tmp_path_factory.mktemp("tok"))


# ----------------------------------------------------------------------------- the type table
def test_type_table_is_the_gguf_packages():
    for name, t in GGML_TYPES.items():
        q = gguf.GGMLQuantizationType[name]
        assert t.id == q.value and (t.block, t.block_bytes) == gguf.GGML_QUANT_SIZES[q]
    assert GGML_TYPES["Q4_0"].bits_per_weight == 4.5 and GGML_TYPES["Q4_K"].bits_per_weight == 4.5
    assert GGML_TYPES["Q6_K"].bits_per_weight == 6.5625 and GGML_TYPES["Q3_K"].bits_per_weight == 3.4375
    assert tensor_nbytes("Q8_0", (64, 128)) == 64 * 4 * 34


def test_llamacpp_fallbacks_for_rows_a_block_does_not_divide():
    # SmolLM2's width 576 is 2.25 blocks of 256: llama.cpp's own fallbacks apply, as in llama-quant.cpp.
    assert [fallback_type(t, 576) for t in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")] == [
        "Q4_0",
        "Q4_0",
        "Q5_0",
        "Q5_1",
        "Q8_0",
    ]
    assert fallback_type("Q4_K", 1536) == "Q4_K"
    assert fallback_type("Q4_K", 48) == "F16" and fallback_type("Q8_0", 48) == "F16"
    assert width_candidates([2, 3, 4, 8], (10, 576)) == {2: ("Q4_0", 4.5), 4: ("Q5_0", 5.5), 8: ("Q8_0", 8.5)}
    assert width_candidates([2, 4], (10, 1536)) == {2: ("Q2_K", 2.625), 4: ("Q4_K", 4.5)}
    with pytest.raises(ValueError, match="no llama.cpp type for 9-bit"):
        width_candidates([9], (1, 256))


def test_exact_containers():
    assert [exact_type(b, True, 32, 64) for b in range(2, 9)] == ["Q4_0"] * 3 + ["Q5_0"] + ["Q8_0"] * 3
    assert [exact_type(b, False, 64, 128) for b in range(2, 9)] == ["Q4_1"] * 3 + ["Q5_1", "Q8_0", "Q8_0", None]
    assert exact_type(4, True, None, 64) == "Q4_0"  # one scale per row: every block inside it
    assert exact_type(4, True, 16, 64) is None and exact_type(4, True, None, 48) is None


# ----------------------------------------------------------------------------- the tensors
@pytest.mark.parametrize("symmetric,group_size", [(True, 32), (False, 32), (True, 64), (False, None)])
def test_every_tensor_is_read_back_with_our_weights(tmp_path, tokenizer_dir, symmetric, group_size):
    model = packed_llama(symmetric, group_size)
    out = export_gguf(model, tmp_path / "m.gguf", tokenizer=tokenizer_dir)
    reader = gguf.GGUFReader(out)
    tensors = {t.name: t for t in reader.tensors}
    policy = json.loads(reader.fields[POLICY_KEY].contents())
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    expected_names = {tmap.get_name(n, try_suffixes=(".weight",)) for n, _ in model.named_parameters()}
    expected_names |= {
        tmap.get_name(f"{n}.weight", try_suffixes=(".weight",))
        for n, m in model.named_modules()
        if hasattr(m, "w_bits")
    }
    assert set(tensors) == expected_names and "output.weight" in tensors
    assert tensors["token_embd.weight"].tensor_type.name == "F16"
    assert all(tensors[n].tensor_type.name == "F32" for n in tensors if n.endswith("norm.weight"))
    assert len(policy) == sum(hasattr(m, "w_bits") for m in model.modules())
    layers = {n: m for n, m in model.named_modules() if hasattr(m, "w_bits")}
    predicted = gguf_weight_bytes(
        {n: m.weight_shape for n, m in layers.items()}, {n: m.w_bits for n, m in layers.items()}, symmetric, group_size
    )
    assert predicted == sum(int(tensors[n].n_bytes) for n in policy)  # the budget's bytes are the file's
    for name, layer in model.named_modules():
        if not hasattr(layer, "w_bits"):
            continue
        gname = tmap.get_name(f"{name}.weight", try_suffixes=(".weight",))
        t, entry = tensors[gname], policy[gname]
        bits, rows, cols = layer.w_bits, *layer.weight_shape
        want = exact_type(bits, symmetric, group_size, cols) or "Q8_0"
        assert t.tensor_type.name == want == entry["type"]
        assert list(t.shape) == [cols, rows] and entry["w_bits"] == bits
        ours = layer.dequantized_weight()
        theirs = torch.from_numpy(rows_back(gguf.quants.dequantize(t.data, t.tensor_type), gname, model))
        codes = layer.codes().float().reshape(rows, -1, 32)
        g = layer.weight_scale.shape[1]
        s = layer.weight_scale.float().repeat_interleave(cols // g // 32, dim=1)[..., None]
        if entry["rounding"] == "exact" and symmetric:
            # bit for bit: our codes times our scale rounded to float16, as the format stores it
            q = codes - (1 << (bits - 1))
            assert torch.equal(theirs, (q * half(s)).reshape(rows, cols))
            bound = q.abs() * s * 2**-11  # float16 rounds a scale by at most 2^-11 of itself
        elif entry["rounding"] == "exact":
            z = layer.weight_zero_point.float().repeat_interleave(cols // g // 32, dim=1)[..., None]
            if want == "Q8_0":
                expect, bound = (codes - z) * half(s), (codes - z).abs() * s * 2**-11
            else:  # d * c + m, with d = s and m = -z s each rounded to float16
                expect, bound = codes * half(s) + half(-z * s), (codes + z) * s * 2**-11
            assert torch.equal(theirs, expect.reshape(rows, cols))
        else:  # asymmetric 8 bits: no int8 container for c - z; the gguf package's Q8_0 rounds our weight
            assert (bits, entry["rounding"]) == (8, "requantized (gguf)")
            step = ours.abs().reshape(rows, -1, 32).amax(-1, keepdim=True) / 127
            bound = step / 2 * (1 + 2**-10) + ours.abs().reshape(rows, -1, 32) * 2**-10
        # ... and against our float32 weights: within that float16 rounding (or half a Q8_0 step)
        assert ((theirs - ours).abs().reshape(rows, -1, 32) <= bound * (1 + 1e-5) + 1e-9).all(), name


def test_transformers_reads_the_file_with_the_packed_models_logits(tmp_path, tokenizer_dir):
    """transformers' GGUF loader (names, hparams, q/k row order undone, dequantized by gguf) gives the logits of
    the packed model itself, up to the float16 scales."""
    from transformers import AutoModelForCausalLM

    model = packed_llama(symmetric=True)
    export_gguf(model, tmp_path / "m.gguf", tokenizer=tokenizer_dir, float_type="F32")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32).eval()
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(input_ids=ids).logits, loaded(input_ids=ids).logits
    assert (ours - theirs).abs().max() <= 1e-3 * ours.abs().max()
    assert (ours - theirs).abs().max() > 0  # the float16 scales do show (the test can see a difference)


# ----------------------------------------------------------------------------- metadata and tokenizer
def test_metadata_tokenizer_and_chat_template(tmp_path, tokenizer_dir):
    model = packed_llama(symmetric=True)
    first = export_gguf(model, tmp_path / "a.gguf", tokenizer=tokenizer_dir, tokenizer_pre="default")
    fields = gguf.GGUFReader(first).fields
    c = model.config
    assert fields["general.architecture"].contents() == "llama"
    assert fields["llama.block_count"].contents() == c.num_hidden_layers
    assert fields["llama.attention.head_count_kv"].contents() == c.num_key_value_heads
    assert fields["llama.embedding_length"].contents() == c.hidden_size
    tokens = fields["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == c.vocab_size and tokens[-1] == f"[PAD{c.vocab_size - 1}]"
    assert fields["tokenizer.ggml.model"].contents() == "gpt2" and fields["tokenizer.ggml.merges"].contents()
    assert "messages" in fields["tokenizer.chat_template"].contents()
    policy = json.loads(fields[POLICY_KEY].contents())
    assert policy["blk.0.attn_q.weight"] == {
        "w_bits": 2,
        "group_size": 32,
        "symmetric": True,
        "type": "Q4_0",
        "rounding": "exact",
        "embedding": False,
    }
    # a GGUF as the tokenizer source: its tokenizer.* keys are copied as they are
    second = export_gguf(model, tmp_path / "b.gguf", tokenizer=first)
    again = gguf.GGUFReader(second).fields
    for key in (
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.chat_template",
        "tokenizer.ggml.eos_token_id",
    ):
        assert again[key].contents() == fields[key].contents(), key
    assert gguf_summary(second)["file_bytes"] == os.path.getsize(second)


def test_packed_embedding_is_token_embd_and_the_tied_head_is_not_written(tmp_path, tokenizer_dir):
    model = tiny_llama(vocab=320, tie_word_embeddings=True)
    names = [n for n in quantizable_layers(model, embeddings=True) if n != "lm_head"]
    model = quantize_model(model, {n: 4 for n in names}, group_size=32, symmetric=True)
    assert type(model.lm_head).__name__ == "QuantTiedLinear"
    out = export_gguf(model, tmp_path / "m.gguf", tokenizer=tokenizer_dir)
    tensors = {t.name: t for t in gguf.GGUFReader(out).tensors}
    assert "output.weight" not in tensors and tensors["token_embd.weight"].tensor_type.name == "Q4_0"
    theirs = gguf.quants.dequantize(tensors["token_embd.weight"].data, tensors["token_embd.weight"].tensor_type)
    emb = model.get_input_embeddings()
    assert torch.equal(
        torch.from_numpy(theirs),
        (emb.codes().float().reshape(320, -1, 32) - 8).mul(half(emb.weight_scale)[..., None]).reshape(320, -1),
    )


# ----------------------------------------------------------------------------- refusals and routing
def test_clear_errors(tmp_path, tokenizer_dir, monkeypatch):
    model = packed_llama(symmetric=True)
    with pytest.raises(ValueError, match="Llama-architecture"):
        export_gguf(
            quantize_model(tiny_gpt2(), {"transformer.h.0.mlp.c_fc": 4}), tmp_path / "g.gguf", tokenizer=tokenizer_dir
        )
    with pytest.raises(ValueError, match="no packed layers"):
        export_gguf(tiny_llama(vocab=320), tmp_path / "f.gguf", tokenizer=tokenizer_dir)
    word_level = make_tiny_llama(tmp_path / "wl")
    with pytest.raises(ValueError, match="no byte-level BPE tokenizer"):
        export_gguf(model, tmp_path / "w.gguf", tokenizer=word_level)
    with pytest.raises(ValueError, match="pass tokenizer="):
        export_gguf(model, tmp_path / "t.gguf")
    monkeypatch.delenv("INFOQ_GGML_LIBRARY", raising=False)
    with pytest.raises(ValueError, match="ggml_library"):
        export_gguf(
            model,
            tmp_path / "k.gguf",
            tokenizer=tokenizer_dir,
            ggml_library=tmp_path / "nowhere",
            types={"model.layers.0.mlp.down_proj": "Q4_K"},
        )
    with pytest.raises(ValueError, match="unknown or unsupported llama.cpp tensor type 'Q9_0'"):
        export_gguf(model, tmp_path / "k.gguf", tokenizer=tokenizer_dir, types={"model.layers.0.mlp.up_proj": "Q9_0"})
    act = quantize_model(
        tiny_llama(vocab=320),
        {"model.layers.0.mlp.up_proj": {"w_bits": 4, "a_bits": 8}},
        group_size=32,
        act_ranges={"model.layers.0.mlp.up_proj": (-1.0, 1.0)},
    )
    with pytest.raises(ValueError, match="a_bits=8"):
        export_gguf(act, tmp_path / "a.gguf", tokenizer=tokenizer_dir)
    (tmp_path / "exists.gguf").write_bytes(b"mine")
    with pytest.raises(ValueError, match="exists"):
        export_gguf(model, tmp_path / "exists.gguf", tokenizer=tokenizer_dir)
    assert (tmp_path / "exists.gguf").read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.glob("*.gguf")) == ["exists.gguf"]  # no partial file left behind


def test_a_layer_without_an_exact_container_takes_llamacpps_type_for_its_width(tmp_path, tokenizer_dir):
    """Groups of 16 split a 32-block: the layer takes llama.cpp's type for 4 bits (Q4_K, whose 256-block
    does not divide rows of 64, so its fallback Q5_0), rounded from our dequantized weight."""
    model = quantize_model(tiny_llama(vocab=320), {"model.layers.0.mlp.up_proj": 4}, group_size=16, symmetric=True)
    out = export_gguf(model, tmp_path / "m.gguf", tokenizer=tokenizer_dir, types={"model.layers.1.mlp.up_proj": "Q8_0"})
    reader = gguf.GGUFReader(out)
    policy = json.loads(reader.fields[POLICY_KEY].contents())
    assert policy["blk.0.ffn_up.weight"]["type"] == "Q5_0"
    assert policy["blk.0.ffn_up.weight"]["rounding"] == "requantized (gguf)"
    assert policy["blk.1.ffn_up.weight"] == {"type": "Q8_0", "rounding": "requantized (gguf)", "w_bits": None}
    t = next(t for t in reader.tensors if t.name == "blk.0.ffn_up.weight")
    ours = model.get_submodule("model.layers.0.mlp.up_proj").dequantized_weight()
    theirs = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type))
    # Q5_0's own rounding: steps of a block's max / 16, the value opposite the max clipped by up to one step
    step = ours.reshape(64 * 2, -1, 32).abs().amax(-1, keepdim=True) / 16
    assert ((theirs - ours).reshape(64 * 2, -1, 32).abs() <= step * 1.01).all()
    assert (theirs - ours).abs().max() > 0


@pytest.mark.skipif(
    not os.environ.get("INFOQ_GGML_LIBRARY"),
    reason="needs llama.cpp's libggml-base (INFOQ_GGML_LIBRARY, see benchmarks/setup_llamacpp.sh)",
)
def test_kquants_are_rounded_by_llamacpp(tmp_path, tokenizer_dir):
    model = quantize_model(
        tiny_llama(vocab=320, intermediate=256), {"model.layers.0.mlp.down_proj": 4}, group_size=32, symmetric=True
    )
    out = export_gguf(
        model, tmp_path / "m.gguf", tokenizer=tokenizer_dir, types={"model.layers.0.mlp.down_proj": "Q4_K"}
    )
    t = next(t for t in gguf.GGUFReader(out).tensors if t.name == "blk.0.ffn_down.weight")
    assert t.tensor_type.name == "Q4_K"
    ours = model.get_submodule("model.layers.0.mlp.down_proj").dequantized_weight()
    theirs = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type))
    assert (theirs - ours).abs().max() <= ours.abs().max() / 15 * 1.1


# ----------------------------------------------------------------------------- the CLI
def test_cli_exports_a_saved_checkpoint_folder(tmp_path, tokenizer_dir):
    from transformers import AutoModelForCausalLM

    from infoq_hf import InfoQConfig
    from infoq_hf.cli import main

    tiny_llama(vocab=320).save_pretrained(tmp_path / "float")
    names = [n for n in quantizable_layers(tiny_llama(vocab=320)) if n != "lm_head"]
    config = InfoQConfig(policy={n: 2 + i % 7 for i, n in enumerate(names)}, group_size=32, symmetric=True)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "float", quantization_config=config)
    model.save_pretrained(tmp_path / "infoq")
    argv = [
        "export",
        str(tmp_path / "infoq"),
        "--format",
        "gguf",
        "--out",
        str(tmp_path / "m.gguf"),
        "--tokenizer",
        str(tokenizer_dir),
    ]
    assert main(argv) == 0
    direct = export_gguf(model, tmp_path / "direct.gguf", tokenizer=tokenizer_dir)
    cli_tensors = {t.name: t.data.tobytes() for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    assert cli_tensors == {t.name: t.data.tobytes() for t in gguf.GGUFReader(direct).tensors}
    assert main(argv) == 2  # the file exists now: refused, not overwritten
    assert main(["export", str(tmp_path / "infoq"), "--format", "gguf", "--out", str(tmp_path / "n.gguf")]) == 2
