"""Every stored tensor of a checkpoint is checked against its config.json (on load and before a push), and
loading one without infoq_hf names the fix. Tiny models built from configs; no network."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from infoq_hf import InfoQConfig
from tests.helpers.models import tiny_llama

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM  # noqa: E402


@pytest.fixture(scope="module")
def llama_float_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama_float")
    tiny_llama().save_pretrained(path)
    return path


def _llama_on_load(float_dir, bits):
    policy = {"re:model\\.layers\\..*": bits}
    return AutoModelForCausalLM.from_pretrained(
        float_dir, quantization_config=InfoQConfig(policy=policy, group_size=32)
    )


@pytest.fixture(scope="module")
def llama_checkpoint(llama_float_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("llama_q")
    _llama_on_load(llama_float_dir, 4).save_pretrained(out)
    return out


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"symmetric": True}, r"stores \['weight_zero_point'\], which its config.json scheme"),
        ({"symmetric": False, "_from": {"symmetric": True}}, "lacks 'weight_zero_point'"),
        ({"policy_a_bits": 8}, "lacks 'input_scale'"),
        ({"group_size": 64}, "stores weight_scale as F32"),
    ],
)
def test_every_stored_tensor_is_checked_against_config_json(llama_float_dir, llama_checkpoint, tmp_path, edit, message):
    source = llama_checkpoint
    if "_from" in edit:  # a symmetric checkpoint, then its config claims asymmetric
        source = tmp_path / "sym"
        policy = {"re:model\\.layers\\..*": 4}
        AutoModelForCausalLM.from_pretrained(
            llama_float_dir, quantization_config=InfoQConfig(policy=policy, group_size=32, symmetric=True)
        ).save_pretrained(source)
    bad = tmp_path / "bad"
    shutil.copytree(source, bad)
    config = json.loads((bad / "config.json").read_text())
    q = config["quantization_config"]
    if "policy_a_bits" in edit:
        for entry in q["policy"].values():
            entry["a_bits"] = edit["policy_a_bits"]
    for key in ("symmetric", "group_size"):
        if key in edit:
            q[key] = edit[key]
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        AutoModelForCausalLM.from_pretrained(bad)


def test_push_refuses_a_folder_whose_config_was_edited(llama_checkpoint, tmp_path, hub_server):
    from infoq_hf.hub import SUMMARY_FILE, push_to_hub, read_checkpoint

    bad = tmp_path / "bad"
    shutil.copytree(llama_checkpoint, bad)
    config = json.loads((bad / "config.json").read_text())
    policy = config["quantization_config"]["policy"]
    summary = {"params": {name: 1 for name in policy}, "avg_bits": 4.0, "size_bytes": 1}  # the fast path: no load
    (bad / SUMMARY_FILE).write_text(json.dumps(summary))
    assert read_checkpoint(bad).policy  # untampered: fine
    config["quantization_config"]["symmetric"] = True
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="weight_zero_point"):
        push_to_hub(bad, "test-user/tampered", token=hub_server.token)
    assert hub_server.repo("test-user/tampered") is None


# ----------------------------------------------------------------------------- the import guard
PLAIN_TRANSFORMERS = """
import json, sys
from transformers import AutoModelForCausalLM
result = {}
for kwargs in ({}, {"ignore_mismatched_sizes": True}):
    try:
        AutoModelForCausalLM.from_pretrained(sys.argv[1], **kwargs)
        result[str(kwargs)] = "loaded"
    except RuntimeError as e:
        result[str(kwargs)] = "raised: " + str(e)
result["infoq_hf imported"] = "infoq_hf" in sys.modules
print("RESULT " + json.dumps(result))
"""


def test_loading_without_infoq_hf_names_the_fix(llama_checkpoint):
    from infoq_hf.checkpoint import IMPORT_HINT_KEY

    done = subprocess.run(
        [sys.executable, "-c", PLAIN_TRANSFORMERS, str(llama_checkpoint)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TRANSFORMERS_VERBOSITY": "warning"},
    )
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert result["infoq_hf imported"] is False
    assert result["{}"].startswith("raised")
    # transformers re-initialises mismatched tensors when told to ignore them; its load report, printed
    # for both calls, names the fix through the hint tensor.
    assert done.stderr.count(IMPORT_HINT_KEY) == 2 and "pip_install_infoq-hf__and_import_infoq_hf" in IMPORT_HINT_KEY
