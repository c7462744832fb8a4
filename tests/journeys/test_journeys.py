"""The journeys a newcomer walks, each on a tiny model built from a config (no network):
group sizes that do not divide every layer, the calibration inputs peers accept, transformers' own
`infoq_hf.save` / `push_to_hub` writing the InfoQ card, the card's content, the CLI on a folder of images,
small CLI fixes.
"""

import json

import pytest
import torch

import infoq_hf
from infoq_hf import Budget, InfoQConfig, allocate, model_size_bytes, quantize_model, search
from infoq_hf.checkpoint import packed_layers
from infoq_hf.quant.quantizer import effective_group_size
from tests.helpers.models import tiny_llama, tiny_timm
from tests.helpers.text import word_tokenizer

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM  # noqa: E402


def _tiny_llama(hidden=576, intermediate=1024, vocab=128):
    """SmolLM2's 576-wide shape, scaled down: attention and gate/up layers take `hidden` inputs (128 does
    not divide 576), down_proj takes `intermediate`."""
    heads = hidden // 64
    return tiny_llama(
        vocab=vocab,
        hidden=hidden,
        intermediate=intermediate,
        heads=heads,
        kv_heads=3 if heads % 3 == 0 else 1,
        pad_token_id=None,
        head_dim=64,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )


# ----------------------------------------------------------------------------- 1. group sizes
@pytest.mark.parametrize(
    "shape, requested, expected",
    [
        ((8, 576), 128, 64),
        ((8, 704), 128, 64),
        ((8, 1024), 128, 128),
        ((8, 768), 256, 256),
        ((8, 576), 256, 64),
        ((8, 96), 64, 32),
        ((8, 100), 128, None),
        ((8, 40), 32, None),
        ((8, 96), 96, 96),
        ((8, 64), 128, 64),
        ((8, 3, 3, 3), 32, None),
        ((8, 576), None, None),
    ],
)
def test_effective_group_size_is_the_largest_fitting_size_not_above_the_request(shape, requested, expected):
    got = effective_group_size(shape, requested)
    assert got == expected
    if got is not None:  # brute force: no larger admissible size divides the width
        fan_in = torch.Size(shape[1:]).numel()
        assert fan_in % got == 0 and got <= requested
        assert not [g for g in (256, 128, 64, 32) if got < g <= requested and fan_in % g == 0]


def test_default_group_size_on_576_wide_layers_packs_and_the_accounting_matches_the_format():
    model = _tiny_llama()
    table = search(model, None, bits=(2, 3, 4, 8), method="weight_mse", group_size=128, skip_modules=["lm_head"])
    policy = allocate(table, Budget(avg_bits=3.0))
    quantize_model(model, policy, group_size=128, skip_modules=["lm_head"])
    assert policy.report.size_bytes == model_size_bytes(model)  # the table's layer_bytes == what is stored
    layers = packed_layers(model)
    assert layers["model.layers.0.self_attn.q_proj"].weight_scale.shape == (576, 576 // 64)
    assert layers["model.layers.0.mlp.down_proj"].weight_scale.shape == (576, 1024 // 128)
    assert "group=64" in repr(layers["model.layers.0.self_attn.q_proj"])


def test_quantize_on_load_with_default_group_size_reloads_identically_and_says_which_sizes(tmp_path, caplog):
    _tiny_llama().save_pretrained(tmp_path / "float")
    config = InfoQConfig(budget={"avg_bits": 3}, method="weight_mse")  # group_size defaults to 128
    with caplog.at_level("INFO", logger="infoq_hf"):
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "float", quantization_config=config).eval()
    groups = {n: s["group_size"] for n, s in infoq_hf.quantization_result(model).summary["layers"].items()}
    assert groups["model.layers.1.self_attn.o_proj"] == 64 and groups["model.layers.1.mlp.down_proj"] == 128
    text = infoq_hf.pipeline.format_summary(infoq_hf.quantization_result(model).summary)
    assert (
        "64 weights per scale: 12 layers" in text
        and "128 weights per scale: 2 layers (model.layers.*.mlp.down_proj)" in text
    )
    model.save_pretrained(tmp_path / "q")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "q").eval()
    ids = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


# ----------------------------------------------------------------------------- 2. calibration inputs
WORDS = [f"w{i}" for i in range(120)]


def _word_tokenizer():
    return word_tokenizer(WORDS)


def _docs(n=12, words=20):
    return [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(words)) for i in range(n)]


@pytest.fixture(scope="module")
def llama_with_tokenizer(tmp_path_factory):
    """A small float Llama saved with its tokenizer, as a Hub download would be."""
    folder = tmp_path_factory.mktemp("float_llama")
    _tiny_llama(hidden=128, intermediate=192).save_pretrained(folder)
    _word_tokenizer().save_pretrained(folder)
    return folder


def _quantize_on_load(folder, calibration, **settings):
    config = InfoQConfig(budget={"avg_bits": 3}, bits=[2, 4, 8], calibration=calibration, method="hawq", **settings)
    return AutoModelForCausalLM.from_pretrained(folder, quantization_config=config)


def _saved_calibration(model, tmp_path):
    model.save_pretrained(tmp_path / "q")
    return json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]["calibration"]


def test_calibration_as_a_list_of_strings_with_sizes_set_on_the_config(llama_with_tokenizer, tmp_path):
    docs = _docs()
    model = _quantize_on_load(llama_with_tokenizer, docs, num_samples=4, seq_len=16)
    record = _saved_calibration(model, tmp_path)
    assert record["source"] == "a list of 12 texts" and len(record["sha256"]) == 64
    assert (record["num_samples"], record["seq_len"]) == (4, 16)
    assert (
        infoq_hf.quantization_result(model).summary["method"] == "hawq"
        and len(infoq_hf.quantization_result(model).summary["layers"]) == 14
    )


def test_calibration_as_a_plain_path_records_only_its_base_name(llama_with_tokenizer, tmp_path):
    path = tmp_path / "data" / "calib.txt"
    path.parent.mkdir()
    path.write_text("\n".join(_docs()))
    model = _quantize_on_load(llama_with_tokenizer, str(path), num_samples=4, seq_len=16)
    record = _saved_calibration(model, tmp_path)
    assert record["dataset"] == "text" and record["data_files"] == "calib.txt"
    assert str(tmp_path) not in json.dumps(record)
    reloaded = InfoQConfig.from_dict(json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"])
    assert reloaded.to_dict()["calibration"] == record  # the record round-trips through config.json
    with pytest.raises(ValueError, match="no such file or folder"):
        InfoQConfig(budget={"avg_bits": 3}, calibration=str(tmp_path / "missing.txt"))


def test_calibration_from_a_small_dataset_warns_and_uses_what_it_has(llama_with_tokenizer, tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": _docs(n=3)})  # 63 tokens: 3 windows of 16, not 8
    with pytest.warns(
        UserWarning,
        match=r"only 3 window\(s\) of seq_len=16.*fewer than num_samples=8.*"
        r"Set num_samples=3",
    ):
        model = _quantize_on_load(llama_with_tokenizer, ds, num_samples=8, seq_len=16)
    record = _saved_calibration(model, tmp_path)
    assert record["source"] == "a datasets.Dataset of 3 rows" and record["num_samples"] == 8
    json.dumps(record)


def test_calibration_spec_holding_a_dataset_object(llama_with_tokenizer, tmp_path):
    datasets = pytest.importorskip("datasets")
    from infoq_hf import CalibrationSpec

    ds = datasets.Dataset.from_dict({"body": _docs()})
    spec = CalibrationSpec(dataset=ds, text_column="body", num_samples=4, seq_len=16)
    model = _quantize_on_load(llama_with_tokenizer, spec)
    record = _saved_calibration(model, tmp_path)
    assert record["source"] == "a datasets.Dataset of 12 rows" and record["text_column"] == "body"
    with pytest.raises(ValueError, match="a record of what a checkpoint was made from"):
        infoq_hf.load_calibration(record, tokenizer=_word_tokenizer())


# ----------------------------------------------------------------------------- 5 and 6. the CLI
def _png_folder(root, per_class=11):
    """Class subfolders of generated PNGs: seeded noise around a colour, of varying sizes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, color in {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 210)}.items():
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(color, 60, size=(36 + i, 40 + 4 * i, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


def _tiny_timm_dir(path):
    from timm.models import save_for_hf

    model = tiny_timm(num_classes=3, pretrained_cfg_overlay=dict(input_size=(3, 32, 32)))
    with torch.no_grad():  # a fresh head predicts one class for every image: make it see what differs
        features = model.forward_head(model.forward_features(torch.randn(32, 3, 32, 32)), pre_logits=True)
        centre = features.mean(0)
        head = model.get_classifier()
        head.weight.normal_(0, 3.0)
        head.bias.copy_(-head.weight @ centre)
    path.mkdir(parents=True)
    save_for_hf(model, str(path))
    return path


def _error_line(capsys):
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_cli_quantizes_a_timm_model_calibrated_on_a_folder_of_images(tmp_path, capsys):
    timm = pytest.importorskip("timm")
    from infoq_hf.cli import main

    images, model_dir, out = _png_folder(tmp_path / "images"), _tiny_timm_dir(tmp_path / "resnet"), tmp_path / "q"
    assert (
        main(
            [
                "quantize",
                f"timm:{model_dir}",
                "--bits",
                "2,4,8",
                "--avg-bits",
                "4",
                "--calib",
                str(images),
                "--samples",
                "32",
                "--batch-size",
                "16",
                "--group-size",
                "none",
                "--out",
                str(out),
            ]
        )
        == 0
    ), capsys.readouterr().err
    summary = json.loads((out / "infoq_summary.json").read_text())
    assert summary["method"] == "infoq" and summary["avg_bits"] <= 4 + 1e-9
    assert summary["calibration"]["dataset"] == "imagefolder" and summary["calibration"]["data_dir"] == "images"
    assert str(tmp_path) not in json.dumps(summary["calibration"])  # the record keeps base names only
    model, float_model = infoq_hf.load_quantized(out), timm.create_model(f"local-dir:{model_dir}", pretrained=True)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():  # the saved weights were quantized, not a fresh initialisation of the architecture
        packed_fc, float_fc = model.get_classifier().weight, float_model.get_classifier().weight
        assert torch.allclose(packed_fc, float_fc, atol=0.05 * float_fc.abs().max())
        assert model(x).shape == (4, 3)


@pytest.mark.parametrize("value", ["9", "8.5", "32"])
def test_cli_refuses_an_average_above_the_widest_packed_width(tmp_path, capsys, value):
    from infoq_hf.cli import main

    assert (
        main(["allocate", str(tmp_path / "scores.json"), "--avg-bits", value, "--out", str(tmp_path / "p.json")]) == 2
    )
    assert f"--avg-bits is an average of packed widths, at most 8 bits; got {value}" in _error_line(capsys)
    assert main(["allocate", str(tmp_path / "scores.json"), "--avg-bits", "8", "--out", str(tmp_path / "p.json")]) == 2
    assert "no such sensitivity table" in _error_line(capsys)  # 8 itself passes the parser


def test_each_subcommand_help_shows_only_its_own_examples(capsys):
    from infoq_hf.cli import main

    assert main(["--help"]) == 0
    everything = capsys.readouterr().out
    for command in ("quantize", "search", "allocate", "report", "push"):
        assert f"infoq {command} " in everything
        assert main([command, "--help"]) == 0
        text = capsys.readouterr().out
        lines = [line.strip() for line in text.split("examples:")[1].splitlines() if line.strip().startswith("infoq ")]
        assert lines and all(line.startswith(f"infoq {command} ") for line in lines), (command, lines)


def test_report_lists_layers_in_block_order_not_alphabetically(tmp_path, capsys):
    from infoq_hf.cli import main

    folder = tmp_path / "float"
    _tiny_llama(hidden=128, intermediate=192).save_pretrained(folder)
    _word_tokenizer().save_pretrained(folder)
    assert (
        main(
            [
                "quantize",
                str(folder),
                "--bits",
                "4,8",
                "--avg-bits",
                "6",
                "--method",
                "weight_mse",
                "--out",
                str(tmp_path / "q"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["report", str(tmp_path / "q")]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("model.layers.")]
    expected = [
        f"model.layers.{i}.{m}"
        for i in range(2)
        for m in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        )
    ]
    assert rows == expected


def test_heatmap_title_fits_its_figure(tmp_path, monkeypatch):
    from infoq_hf import plots

    model = _tiny_llama(hidden=128, intermediate=192)
    table = search(model, None, bits=(2, 3, 4, 8), method="weight_mse", skip_modules=["lm_head"])
    policy = allocate(table, Budget(avg_bits=4))
    saved, extents = plots._save, []

    def measuring_save(fig, path):  # the laid-out figure, just before it is written
        fig.tight_layout()
        title = fig.axes[0].title
        extent = title.get_window_extent(fig.canvas.get_renderer())
        extents.append((extent.x0, extent.x1, fig.bbox.width, title.get_text()))
        return saved(fig, path)

    monkeypatch.setattr(plots, "_save", measuring_save)
    plots.plot_sensitivity_heatmap(table, tmp_path / "fitted.png", policy)
    monkeypatch.setattr(plots, "fit_title", lambda fig, ax, text: ax.set_title(text))  # the title as it was
    plots.plot_sensitivity_heatmap(table, tmp_path / "plain.png", policy)
    (x0, x1, width, text), (p0, p1, _, plain) = extents
    assert p0 < 0 or p1 > width, "the unwrapped title should overflow this narrow figure"
    assert 0 <= x0 and x1 <= width and "\n" in text
    assert text.replace("\n", " ") == plain == "weight_mse sensitivity per layer and bit-width (outlined: chosen)"


# ----------------------------------------------------------------------------- 3 and 4. native push, the card
def _front_matter(text):
    import yaml

    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


BASE_CARD = "---\nlicense: apache-2.0\npipeline_tag: text-generation\nlibrary_name: transformers\n---\n# tiny\n"


@pytest.fixture
def hub_llama(hub_server, monkeypatch, tmp_path):
    """A float model published on the loopback Hub with its own card (license, pipeline_tag)."""
    monkeypatch.setenv("HF_TOKEN", hub_server.token)
    folder = tmp_path / "float"
    _tiny_llama(hidden=128, intermediate=192).save_pretrained(folder)
    _word_tokenizer().save_pretrained(folder)
    (folder / "README.md").write_text(BASE_CARD)
    api = hub_server.api()
    api.create_repo("test-org/tiny-llama")
    api.upload_folder(repo_id="test-org/tiny-llama", folder_path=folder)
    return "test-org/tiny-llama"


def test_push_to_hub_writes_the_infoq_card_with_base_model_license_and_sensitivities(hub_server, hub_llama, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(
        hub_llama, quantization_config=InfoQConfig(bits=[2, 4, 8], budget={"avg_bits": 4}, method="weight_mse")
    )
    infoq_hf.push_to_hub(model, "test-user/tiny-llama-infoq", token=hub_server.token)
    files = hub_server.files("test-user/tiny-llama-infoq")
    assert {
        "model.safetensors",
        "config.json",
        "infoq_sensitivity.json",
        "infoq_summary.json",
        "infoq_sensitivity_heatmap.png",
        "README.md",
    } <= set(files)
    card = files["README.md"].decode()
    meta = _front_matter(card)
    assert meta["base_model"] == hub_llama and meta["base_model_relation"] == "quantized"
    assert meta["license"] == "apache-2.0" and meta["pipeline_tag"] == "text-generation"
    assert meta["library_name"] == "transformers" and "infoq" in meta["tags"]
    rows = [line for line in card.splitlines() if line.startswith("| `model.layers.")]
    assert len(rows) == 14 and all(not row.rstrip(" |").endswith("–") for row in rows)  # sensitivities filled

    # transformers' own push_to_hub uploads a checkpoint that reloads, with its run's summary (its card is
    # transformers' own: the library does not replace transformers' methods)
    model.push_to_hub("test-user/tiny-llama-native")
    native = AutoModelForCausalLM.from_pretrained("test-user/tiny-llama-native")
    assert infoq_hf.quantization_result(native).summary["base_model"] == hub_llama
    ids = torch.randint(0, 128, (1, 8))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, native(ids).logits)

    # the published checkpoint, loaded and saved again, still names the float model (not itself) as its base
    again = AutoModelForCausalLM.from_pretrained("test-user/tiny-llama-infoq")
    infoq_hf.save(again, tmp_path / "resaved")
    resaved = (tmp_path / "resaved" / "README.md").read_text()
    assert _front_matter(resaved)["base_model"] == hub_llama and _front_matter(resaved)["license"] == "apache-2.0"
    assert [line for line in resaved.splitlines() if line.startswith("| `model.layers.")] == rows


def test_save_writes_the_card_files_and_reloads(tmp_path, llama_with_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(
        llama_with_tokenizer,
        quantization_config=InfoQConfig(bits=[2, 4, 8], budget={"avg_bits": 3}, method="weight_mse"),
    )
    infoq_hf.save(model, tmp_path / "q")
    for name in (
        "README.md",
        "infoq_sensitivity.json",
        "infoq_summary.json",
        "infoq_bits_per_layer.png",
        "infoq_sensitivity_heatmap.png",
    ):
        assert (tmp_path / "q" / name).is_file(), name
    meta = _front_matter((tmp_path / "q" / "README.md").read_text())
    assert "base_model" not in meta  # a local float model: no Hub id to name
    assert meta["pipeline_tag"] == "text-generation"  # from the architecture (the folder's card has none)
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    ids = torch.randint(0, 128, (1, 8))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
    model.save_pretrained(tmp_path / "plain")  # transformers' own save: the checkpoint, no card
    assert not (tmp_path / "plain" / "README.md").exists()


def test_card_carries_install_generate_quality_speed_and_the_command(tmp_path, llama_with_tokenizer):
    from infoq_hf.hub import SUMMARY_FILE, read_checkpoint, write_model_card

    model = AutoModelForCausalLM.from_pretrained(
        llama_with_tokenizer,
        quantization_config=InfoQConfig(bits=[2, 4, 8], budget={"avg_bits": 3}, method="weight_mse"),
    )
    infoq_hf.save(model, tmp_path / "q", tokenizer=_word_tokenizer())
    card = (tmp_path / "q" / "README.md").read_text()
    assert "pip install infoq-hf" in card and "import infoq_hf" in card
    assert "AutoTokenizer.from_pretrained(" in card and "model.generate(**inputs" in card
    assert "Not measured when this checkpoint was made" in card and "## Speed" in card and "can run slower" in card
    assert (
        "infoq quantize FLOAT_MODEL_DIR --bits 2,4,8 --avg-bits 3 --method weight_mse --group-size 128 "
        "--seed 0 --out OUT_DIR"
    ) in card
    assert (
        "requested 128, where it divides a layer's width; packed: 128 weights per scale (12 layers), "
        "64 weights per scale (2 layers)"
    ) in card  # the down_proj layers are 192 wide

    summary = json.loads((tmp_path / "q" / SUMMARY_FILE).read_text())  # a run that measured its quality
    summary["metrics"] = [{"metric": "perplexity", "data": "held-out text", "quantized": 61.25, "float": 40.5}]
    (tmp_path / "q" / SUMMARY_FILE).write_text(json.dumps(summary))
    card = write_model_card(tmp_path / "q", read_checkpoint(tmp_path / "q"), "me/tiny")
    assert "| perplexity | held-out text | 61.25 | 40.5 |" in card


def test_recipes_save_the_table_under_the_name_report_reads(tmp_path):
    from types import SimpleNamespace

    from infoq_hf.hub import TABLE_FILE, read_checkpoint
    from recipes.common import save_table_and_allocate

    model = _tiny_llama(hidden=128, intermediate=192)
    model.save_pretrained(tmp_path / "float")
    table = search(model, None, bits=(2, 4, 8), method="weight_mse", skip_modules=["lm_head"])
    out, policy = save_table_and_allocate(
        SimpleNamespace(is_main_process=True), table, tmp_path / "r", 4.0, progress=False
    )
    assert (out / TABLE_FILE).is_file()
    packed = AutoModelForCausalLM.from_pretrained(tmp_path / "float", quantization_config=InfoQConfig(policy=policy))
    infoq_hf.save(packed, out)  # as the recipe does, into the folder that holds the table
    assert read_checkpoint(out).table.to_dict() == table.to_dict()  # what infoq report and the card read
    rows = [line for line in (out / "README.md").read_text().splitlines() if line.startswith("| `model.layers.")]
    assert len(rows) == 14 and all(not row.rstrip(" |").endswith("–") for row in rows)


def test_example_card_of_the_demo_model_has_the_hub_metadata():
    from pathlib import Path

    from infoq_hf.hub import check_model_card

    path = Path(__file__).resolve().parents[2] / "model_cards" / "example_smollm2_infoq.md"
    text = path.read_text()
    meta = check_model_card(text).data.to_dict()  # parses as a Hub model card
    assert {k: _front_matter(text)[k] for k in ("base_model", "license")} == {
        k: meta[k] for k in ("base_model", "license")
    }
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["base_model_relation"] == "quantized"
    assert meta["library_name"] == "transformers" and meta["license"] == "apache-2.0"
    assert meta["pipeline_tag"] == "text-generation"
    for plot in ("bits_per_layer", "sensitivity_heatmap"):
        assert (
            f"(example_smollm2_infoq_{plot}.png)" in text
            and (path.parent / f"example_smollm2_infoq_{plot}.png").is_file()
        )
