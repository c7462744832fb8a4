"""Hand-offs a transformers user expects, on tiny models: transformers' own methods are never replaced,
`dequantize()` -> `save_pretrained` -> `from_pretrained` gives the float model back, a plain
`save_pretrained` reloads with its run's summary, the summary is visible without logging setup, the
refinement's bar ends at its total, `infoq_hf.save` writes one transaction with the tokenizer and a
model card whose title, base model, files, snippet, quality line and license are right, and the help
text names `hf auth login`."""

import json
import os
import re
from pathlib import Path

import pytest
import torch

import infoq_hf
from infoq_hf import Budget, InfoQConfig, allocate, quantize_model, refine, search
from tests.helpers.models import lm_batches, tiny_llama, tiny_timm
from tests.helpers.text import word_tokenizer

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM  # noqa: E402

WORDS = "the a quick brown fox jumps over lazy dog and cat runs".split()
IDS = torch.tensor([[3, 5, 7, 9, 11, 2]])


def _word_tokenizer():
    return word_tokenizer(WORDS)


@pytest.fixture(scope="module")
def float_folder(tmp_path_factory):
    """A float Llama folder named after the model, whose config.json names its Hub origin (as a
    `snapshot_download`ed and re-saved config does), with its tokenizer."""
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    tiny_llama(pad_token_id=None, max_position_embeddings=64).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "_name_or_path": "test-org/tiny-llama"}))
    _word_tokenizer().save_pretrained(folder)
    return folder


def _quantize_on_load(folder, **settings):
    config = InfoQConfig(bits=[2, 4, 8], budget={"avg_bits": 4}, method="weight_mse", **settings)
    return AutoModelForCausalLM.from_pretrained(folder, quantization_config=config).eval()


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


def _front_matter(text: str) -> dict:
    import yaml

    return yaml.safe_load(text.split("---\n")[1])


def _snippet(card: str) -> str:
    return re.search(r"```python\n(.*?)```", card, re.S).group(1)


# ----------------------------------------------------------------------------- transformers through its hooks only
def test_no_transformers_method_is_replaced_on_the_model_or_in_the_library(float_folder):
    model = _quantize_on_load(float_folder)
    assert not {"save_pretrained", "push_to_hub", "forward"} & set(vars(model))
    assert model.save_pretrained.__func__ is type(model).save_pretrained
    package = Path(infoq_hf.__file__).parent
    assigned = [
        f"{p.relative_to(package)}:{line}"
        for p in package.rglob("*.py")
        for line in p.read_text().splitlines()
        if re.search(r"(?<!self)\.(save_pretrained|push_to_hub|forward)\s*=[^=]", line)
    ]
    assert assigned == []


def test_dequantize_then_save_pretrained_then_from_pretrained_gives_the_float_model(float_folder, tmp_path):
    model = _quantize_on_load(float_folder)
    model.dequantize()
    expected = _logits(model)
    model.save_pretrained(tmp_path / "float-again")
    assert "quantization_config" not in json.loads((tmp_path / "float-again" / "config.json").read_text())
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "float-again").eval()
    assert type(again.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert torch.equal(_logits(again), expected)
    assert infoq_hf.quantization_result(again) is None


def test_plain_save_pretrained_reloads_with_the_runs_summary(float_folder, tmp_path):
    model = _quantize_on_load(float_folder)
    summary = infoq_hf.quantization_result(model).summary
    model.save_pretrained(tmp_path / "q")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    assert torch.equal(_logits(again), _logits(model))
    result = infoq_hf.quantization_result(again)
    assert result is not None and result.policy.to_dict() == model.config.quantization_config.policy.to_dict()
    assert result.summary == json.loads(json.dumps(summary, default=str))
    assert result.summary["base_model"] == "test-org/tiny-llama"  # the float folder's Hub origin
    assert "14 layers packed" in infoq_hf.format_summary(result.summary)


def test_the_runs_summary_is_visible_without_logging_setup(float_folder, capsys):
    model = _quantize_on_load(float_folder)
    err = capsys.readouterr().err
    summary = infoq_hf.quantization_result(model).summary
    line = [line for line in err.splitlines() if line.startswith("InfoQ: ")]
    assert len(line) == 1
    assert f"{summary['quantized_layers']} layers packed at {summary['avg_bits']:.2f} average weight bits" in line[0]
    assert "quantization_result(model)" in line[0]


def test_the_refinement_bar_ends_at_its_total(monkeypatch):
    import importlib

    from tqdm.auto import tqdm

    refine_module = importlib.import_module("infoq_hf.allocation.refine")  # the package re-exports the function
    bars = []

    class Recorded(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": False})
            bars.append(self)

    monkeypatch.setattr(refine_module, "tqdm", Recorded)
    model = tiny_llama(vocab=96, pad_token_id=None, max_position_embeddings=64)
    batches = lm_batches()
    table = search(model, batches, bits=(2, 8), group_size=32, skip_modules=["lm_head"], progress=False)
    policy = refine(allocate(table, Budget(avg_bits=5.0)), model, batches[:1], passes=200, seed=0, progress=True)
    assert policy.report.refinement.passes < 200  # the chain ran out of moves before its passes
    (bar,) = bars
    assert bar.n == bar.total == policy.report.refinement.passes


# ----------------------------------------------------------------------------- infoq_hf.save and its card
def test_save_writes_one_transaction_with_the_tokenizer_and_a_card_that_runs_as_pasted(
    float_folder, tmp_path, monkeypatch
):
    model = _quantize_on_load(float_folder)
    staged = []
    mkdir = os.mkdir

    def counting_mkdir(path, *args, **kwargs):
        if Path(path).name.startswith(".infoq-save-"):
            staged.append(path)
        return mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", counting_mkdir)
    monkeypatch.chdir(tmp_path)
    infoq_hf.save(
        model,
        "out",
        tokenizer=_word_tokenizer(),
        metrics=[{"metric": "perplexity", "data": "held-out text", "quantized": 61.25, "float": 40.5}],
    )
    monkeypatch.setattr(os, "mkdir", mkdir)
    assert len(set(staged)) == 1  # one save transaction, not one inside another
    out = tmp_path / "out"
    assert {"tokenizer.json", "tokenizer_config.json", "README.md", "infoq_summary.json"} <= {
        p.name for p in out.iterdir()
    }
    card = (out / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["base_model"] == "test-org/tiny-llama" and meta["base_model_relation"] == "quantized"
    assert "\n# tiny-llama, InfoQ mixed precision (4.00 bits average)\n" in card  # the model's name, not "out"
    size = (out / "model.safetensors").stat().st_size
    assert f"| `model.safetensors` | {size / 1e3:.2f} kB |" in card
    assert "| `tokenizer.json` | " in card and "| `README.md` |" not in card
    assert "| perplexity | held-out text | 61.25 | 40.5 |" in card and "measured no quality metric" not in card
    assert "<user>" not in card and str(tmp_path) not in card
    # the snippet runs as pasted, from the folder's parent
    snippet = _snippet(card).replace("max_new_tokens=32", "max_new_tokens=2")
    assert 'AutoTokenizer.from_pretrained("out")' in snippet
    exec(compile(snippet, "card-snippet", "exec"), {})
    # and transformers' pipeline finds everything in the folder
    generate = transformers.pipeline("text-generation", model="out")
    assert generate("the quick", max_new_tokens=2, do_sample=False)[0]["generated_text"].startswith("the quick")


def test_card_without_a_tokenizer_or_metrics_names_only_what_the_folder_holds(float_folder, tmp_path, monkeypatch):
    model = _quantize_on_load(float_folder)
    monkeypatch.chdir(tmp_path)
    infoq_hf.save(model, "bare", tokenizer=False)
    card = (tmp_path / "bare" / "README.md").read_text()
    assert not (tmp_path / "bare" / "tokenizer.json").exists()
    assert 'AutoTokenizer.from_pretrained("bare")' not in card
    assert 'AutoTokenizer.from_pretrained("test-org/tiny-llama")' in card  # the base model's, said as such
    assert "measured no quality metric" not in card and "Not measured when this checkpoint was made" in card


def test_the_known_tokenizer_travels_and_the_card_survives_a_reload_and_save(float_folder, tmp_path, monkeypatch):
    model = _quantize_on_load(float_folder)
    monkeypatch.chdir(tmp_path)
    infoq_hf.save(model, "first")  # the float folder's tokenizer, found without being passed
    assert (tmp_path / "first" / "tokenizer.json").is_file()
    again = AutoModelForCausalLM.from_pretrained("first")
    assert infoq_hf.quantization_result(again).summary["avg_bits"] == pytest.approx(4.0)
    infoq_hf.save(again, "second")  # ... and the checkpoint's, on the next save
    assert (tmp_path / "second" / "tokenizer.json").is_file()
    card = (tmp_path / "second" / "README.md").read_text()
    assert _front_matter(card)["base_model"] == "test-org/tiny-llama"  # the float model, not "first"
    assert 'AutoTokenizer.from_pretrained("second")' in card


def test_timm_card_carries_the_license_and_a_snippet_that_runs(tmp_path, monkeypatch):
    model = tiny_timm()
    assert model.pretrained_cfg["license"] == "apache-2.0"
    quantize_model(model, {n: 4 for n in infoq_hf.quantizable_layers(model)})
    monkeypatch.chdir(tmp_path)
    infoq_hf.save(model, "r")
    card = (tmp_path / "r" / "README.md").read_text()
    assert _front_matter(card)["license"] == "apache-2.0"
    assert card.count("\n# test_resnet, InfoQ mixed precision") == 1
    scope = {}
    exec(compile(_snippet(card), "card-snippet", "exec"), scope)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(scope["model"](x), model.eval()(x))


def test_help_and_errors_say_hf_auth_login(monkeypatch, capsys):
    from infoq_hf.cli import main
    from infoq_hf.hub import MissingTokenError, resolve_token

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", "/nonexistent-infoq-test")
    with pytest.raises(MissingTokenError) as e:
        resolve_token()
    assert "hf auth login" in str(e.value) and "huggingface-cli" not in str(e.value)
    try:
        main(["--help"])
    except SystemExit:
        pass
    text = capsys.readouterr().out
    assert "hf auth login" in text and "huggingface-cli" not in text


def test_cli_quantize_saves_the_tokenizer_and_a_card_for_the_folder(float_folder, tmp_path, monkeypatch):
    from infoq_hf.cli import main

    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "quantize",
                str(float_folder),
                "--bits",
                "2,4,8",
                "--avg-bits",
                "4",
                "--method",
                "weight_mse",
                "--out",
                "cli-out",
            ]
        )
        == 0
    )
    card = (tmp_path / "cli-out" / "README.md").read_text()
    assert (tmp_path / "cli-out" / "tokenizer.json").is_file()
    assert 'AutoTokenizer.from_pretrained("cli-out")' in card and "<user>" not in card
    assert "\n# tiny-llama, InfoQ mixed precision" in card
    assert _front_matter(card)["base_model"] == "test-org/tiny-llama"


def test_a_users_readme_is_kept_and_the_card_goes_beside_it(float_folder, tmp_path, capsys):
    from infoq_hf.cli import main

    model = _quantize_on_load(float_folder)
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("# my notes\n")
    infoq_hf.save(model, out)
    infoq_hf.save(model, out)  # a second save keeps it too
    assert main(["report", str(out)]) == 0  # and so does the report
    assert (out / "README.md").read_text() == "# my notes\n"
    assert "infoq" in _front_matter((out / "INFOQ_CARD.md").read_text())["tags"]
    assert "wrote INFOQ_CARD.md" in capsys.readouterr().out

    ours = tmp_path / "ours"  # a card of an earlier InfoQ save is the library's own: replaced in place
    infoq_hf.save(model, ours)
    infoq_hf.save(model, ours)
    assert "infoq" in _front_matter((ours / "README.md").read_text())["tags"]
    assert not (ours / "INFOQ_CARD.md").exists()


def test_quantize_model_then_plain_save_pretrained_reloads_packed(tmp_path):
    model = tiny_llama()
    names = infoq_hf.quantizable_layers(model, skip_modules=["lm_head"])
    quantize_model(model, {n: 4 for n in names}, group_size=32)
    model.save_pretrained(tmp_path / "packed")  # transformers' own save, no quantizer involved
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "packed")
    ids = torch.randint(0, model.config.vocab_size, (1, 8))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)
    assert set(infoq_hf.quant.apply.packed_layers(reloaded)) == set(names)

    infoq_hf.dequantize_model(model)  # back to float: saves and reloads as float
    model.save_pretrained(tmp_path / "float")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "float")
    assert getattr(again.config, "quantization_config", None) is None
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)
