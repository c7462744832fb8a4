"""The single pipeline: quantize-on-load, the CLI and search + allocate give one policy; the float
model is loaded once; accelerate's device hooks survive the search and the refinement."""

from __future__ import annotations

import json

import pytest
import torch

import infoq_hf
from infoq_hf import Budget, InfoQConfig, allocate, quantization_result, refine, search
from infoq_hf.cli import main as cli_main
from infoq_hf.defaults import DEFAULT_REFINE_CHAINS
from infoq_hf.pipeline import load_calibration_batches
from tests.helpers.models import make_calibration_text, make_tiny_llama, tiny_llama

transformers = pytest.importorskip("transformers")
SPEC = {"num_samples": 6, "seq_len": 16, "batch_size": 2, "seed": 0}


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    return make_tiny_llama(root / "llama"), make_calibration_text(root / "calib.txt")


def _reference_policy(model_dir, calib, refine_passes):
    """search + allocate + refine by hand, on the batches the pipeline loads for the same spec."""
    model = transformers.LlamaForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    batches = load_calibration_batches(
        {"dataset": "text", "data_files": str(calib), **SPEC}, model, tokenizer=tokenizer
    )
    table = search(
        model,
        batches,
        bits=(2, 4, 8),
        method="infoq",
        group_size=16,
        skip_modules=["lm_head"],
        progress=False,
    )
    policy = allocate(table, Budget(avg_bits=3.0))
    if refine_passes:
        policy = refine(
            policy,
            model,
            batches,
            passes=refine_passes,
            chains=DEFAULT_REFINE_CHAINS,  # InfoQConfig's
            progress=False,
        )
    return table, policy


def _count_loads(monkeypatch) -> list:
    """The class names of every `from_pretrained` call from now on (the list fills as they happen)."""
    loads = []
    original = transformers.PreTrainedModel.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        loads.append(cls.__name__)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(counting))
    return loads


def test_quantize_on_load_loads_once_and_equals_search_plus_allocate(llama_dir, monkeypatch):
    model_dir, calib = llama_dir
    table, expected = _reference_policy(model_dir, calib, refine_passes=3)
    loads = _count_loads(monkeypatch)
    config = InfoQConfig(
        bits=(2, 4, 8),
        budget={"avg_bits": 3.0},
        method="infoq",
        group_size=16,
        calibration={"dataset": "text", "data_files": str(calib), **SPEC},
        refine_passes=3,
    )
    model = transformers.LlamaForCausalLM.from_pretrained(model_dir, quantization_config=config)
    assert loads == ["LlamaForCausalLM"]
    result = quantization_result(model)
    assert result.policy == expected and result.policy.report.refinement is not None
    assert result.table.layers == table.layers
    assert model.config.quantization_config.policy == expected
    # rounding "auto" made concrete and recorded: 96 calibration tokens are too few for GPTQ
    assert result.summary["rounding"] == model.config.quantization_config.rounding == "rtn"


def test_cli_quantize_loads_the_float_model_once(llama_dir, tmp_path, monkeypatch):
    model_dir, calib = llama_dir
    _, expected = _reference_policy(model_dir, calib, refine_passes=0)
    loads = _count_loads(monkeypatch)
    out = tmp_path / "q"
    argv = [
        "quantize",
        str(model_dir),
        "--calib",
        str(calib),
        "--samples",
        "6",
        "--seq-len",
        "16",
        "--batch-size",
        "2",
        "--bits",
        "2,4,8",
        "--group-size",
        "16",
        "--avg-bits",
        "3",
        "--refine-passes",
        "0",
        "--out",
        str(out),
    ]
    assert cli_main(argv) == 0
    assert loads == ["LlamaForCausalLM"]
    monkeypatch.undo()
    stored = json.loads((out / "config.json").read_text())["quantization_config"]["policy"]
    assert infoq_hf.BitPolicy.from_dict(stored) == expected
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert infoq_hf.checkpoint.policy_of(reloaded) == expected


def test_search_and_refinement_keep_accelerate_device_hooks():
    """A model with accelerate's AlignDevicesHook on every module (what dispatch_model attaches) keeps
    each hook object, and gives identical outputs, after a search and a refined allocation."""
    from accelerate.hooks import AlignDevicesHook, attach_align_device_hook

    model = tiny_llama(vocab=96)
    batches = [
        {"input_ids": torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(i))} for i in range(2)
    ]
    attach_align_device_hook(model, execution_device=torch.device("cpu"))
    hooks = {name: m._hf_hook for name, m in model.named_modules() if hasattr(m, "_hf_hook")}
    assert hooks and all(isinstance(h, AlignDevicesHook) for h in hooks.values())
    forwards = {name: vars(model.get_submodule(name)).get("forward") for name in hooks}  # the hooked forwards
    with torch.no_grad():
        before = model(**batches[0]).logits
    table = search(model, batches, bits=(2, 4, 8), group_size=16, skip_modules=["lm_head"], progress=False)
    refine(allocate(table, Budget(avg_bits=3.0)), model, batches, passes=3, progress=False)
    after_hooks = {name: m._hf_hook for name, m in model.named_modules() if hasattr(m, "_hf_hook")}
    assert after_hooks.keys() == hooks.keys() and all(after_hooks[n] is hooks[n] for n in hooks)
    assert all(vars(model.get_submodule(n)).get("forward") is forwards[n] for n in hooks)
    with torch.no_grad():
        assert torch.equal(model(**batches[0]).logits, before)
