"""A peer's per-layer widths (benchmarks/peers/policy_file.py) read, checked and packed by compare.py."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import compare
from benchmarks.peers.autoscheme_policy import grid_levels_ok
from benchmarks.peers.autoscheme_table import width_summary
from benchmarks.peers.policy_file import load_policy_file, windows_digest
from tests.helpers.models import tiny_llama


def write(tmp_path, record, name="p.json"):
    path = tmp_path / name
    path.write_text(json.dumps(record))
    return str(path)


def test_a_policy_file_gives_its_label_budget_and_widths(tmp_path):
    path = write(tmp_path, {"model": "tiny_llama", "target_avg_bits": 3.0, "layers": {"a": 2, "b": 4}, "x": 1})
    peer = load_policy_file(f"autoscheme={path}", "tiny_llama")
    assert (peer.label, peer.budget, peer.layers, peer.record["x"]) == ("autoscheme", 3.0, {"a": 2, "b": 4}, 1)
    peer.check_layers(["a", "b"], (2, 3, 4, 8))


@pytest.mark.parametrize(
    "record, spec_fmt, model_key, message",
    [
        ({"target_avg_bits": 3, "layers": {}}, "{path}", None, "NAME=PATH"),
        ({"target_avg_bits": 3, "layers": {}}, "as=/no/such.json", None, "no file"),
        ({"layers": {"a": 2}}, "as={path}", None, "target_avg_bits"),
        ({"target_avg_bits": 3, "layers": {"a": 2.5}}, "as={path}", None, "widths are ints"),
        ({"target_avg_bits": 3, "layers": {"a": True}}, "as={path}", None, "widths are ints"),
        ({"model": "smollm2", "target_avg_bits": 3, "layers": {}}, "as={path}", "tiny_llama", "written for model"),
    ],
)
def test_a_bad_policy_file_is_named_with_the_problem(tmp_path, record, spec_fmt, model_key, message):
    path = write(tmp_path, record)
    with pytest.raises(ValueError, match=message):
        load_policy_file(spec_fmt.format(path=path), model_key)


def test_a_file_that_is_not_json_is_refused(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        load_policy_file(f"as={path}")


@pytest.mark.parametrize(
    "layers, message",
    [({"a": 2}, "1 missing"), ({"a": 2, "b": 3, "c": 4}, "1 unknown"), ({"a": 2, "b": 5}, "outside the candidates")],
)
def test_layers_must_be_exactly_the_models_at_candidate_widths(tmp_path, layers, message):
    peer = load_policy_file(f"as={write(tmp_path, {'target_avg_bits': 3, 'layers': layers})}")
    with pytest.raises(ValueError, match=message):
        peer.check_layers(["a", "b"], (2, 3, 4, 8))


def test_the_windows_digest_sees_one_changed_token():
    ids = torch.arange(24).view(6, 4)
    batches = [{"input_ids": x} for x in ids.split(4)]
    same = [{"input_ids": x.clone()} for x in ids.split(4)]
    changed = ids.clone()
    changed[5, 3] += 1
    assert windows_digest(batches) == windows_digest(same)
    assert windows_digest(batches) != windows_digest([{"input_ids": x} for x in changed.split(4)])


def test_the_grid_check_counts_levels_per_group():
    model = tiny_llama()  # Linear layers whose inputs are a multiple of 64
    name = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m.in_features % 64 == 0)
    layer = model.get_submodule(name)
    with torch.no_grad():
        groups = layer.weight.view(-1, 64)
        groups.copy_(torch.arange(64).remainder(4).float().expand_as(groups) * groups[:, :1])  # 4 levels a group
    assert grid_levels_ok(model, {name: 2})
    with torch.no_grad():
        layer.weight.view(-1, 64)[0, 0] = 123.0  # a fifth value in one group
    assert not grid_levels_ok(model, {name: 2}) and grid_levels_ok(model, {name: 3})


def table_rows(path):
    """The rows of the main table (header to the first blank line), without the separator."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| allocation"))
    end = lines.index("", start)
    return [line for line in lines[start:end] if "---" not in line]


def test_compare_packs_a_policy_file_like_the_same_policy_given_inline(tmp_path):
    """A file setting every layer to 3 bits is uniform 3-bit: its row must equal the uniform row, and the
    run's other rows must be those of a run without the file."""
    args = ["--model", "tiny_llama", "--methods", "size_only", "--budgets", "3.0", "--refine-passes", "0"]
    compare.main([*args, "--out", str(tmp_path / "plain")])
    labels = [line.split(" | ")[0] for line in table_rows(tmp_path / "plain" / "compare_tiny_llama.md")]
    assert labels[1:] == ["| fp32", "| uniform 3-bit", "| size_only"]

    shape_twin = tiny_llama(layers=8, vocab=256)  # compare's tiny Llama has these layer names
    names = [n for n, m in shape_twin.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    path = write(tmp_path, {"model": "tiny_llama", "target_avg_bits": 3.0, "layers": {n: 3 for n in names}})
    compare.main([*args, "--out", str(tmp_path / "peer"), "--policy-file", f"three={path}"])
    plain = table_rows(tmp_path / "plain" / "compare_tiny_llama.md")
    peer = table_rows(tmp_path / "peer" / "compare_tiny_llama.md")
    assert peer[:-1] == plain  # the existing rows, unchanged
    cells = [c.strip() for c in peer[-1].strip("|").split("|")]
    uniform = [c.strip() for c in plain[2].strip("|").split("|")]
    assert cells[0] == "three" and cells[1:5] == uniform[1:5]  # budget, achieved bits, dev and test perplexity


def test_the_width_summary_counts_layers_and_averages_each_projection():
    layers = {"m.0.q_proj": 2, "m.1.q_proj": 4, "m.0.down_proj": 8, "m.1.down_proj": 3}
    lines = width_summary({3.0: {"layers": layers, "avg_bits": 3.25, "autoscheme_wall_s": 12.4}})
    assert lines[0] == "| budget | AutoScheme wall s | avg bits (ours) | layers at 2/3/4/8 | down_proj | q_proj |"
    assert lines[2] == "| 3.0 | 12 | 3.250 | 1/1/1/1 | 5.50 | 3.00 |"
