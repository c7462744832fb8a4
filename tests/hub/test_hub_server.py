"""The loopback Hub (tests/helpers/hub_server.py) driven by the real huggingface_hub client and transformers."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import HfApi, ModelCard, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.helpers.hub_fixtures import hub_server  # noqa: F401
from tests.helpers.models import tiny_gpt2

BINARY = bytes(range(256)) * 40 + b"\x00\xff"


def _make_folder(root: Path) -> Path:
    folder = root / "upload"
    (folder / "weights").mkdir(parents=True)
    (folder / "weights" / "blob.bin").write_bytes(BINARY)
    (folder / "config.json").write_text('{"bits": 4}')
    (folder / "README.md").write_text("---\nlicense: apache-2.0\ntags:\n- infoq\n---\n# Test model\n")
    return folder


def test_whoami_and_bad_token(hub_server):
    me = hub_server.api().whoami()
    assert me["name"] == hub_server.user
    assert [org["name"] for org in me["orgs"]] == ["test-org"]
    with pytest.raises(HfHubHTTPError) as err:
        hub_server.api(token="hf_not_a_real_token").whoami()
    assert err.value.response.status_code == 401


def test_create_repo_conflict_exists_and_delete(hub_server):
    api = hub_server.api()
    url = api.create_repo("test-user/model-a")
    assert url.repo_id == "test-user/model-a"
    assert url == f"{hub_server.endpoint}/test-user/model-a"
    assert api.repo_exists("test-user/model-a")
    assert not api.repo_exists("test-user/nope")

    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("test-user/model-a")
    assert err.value.response.status_code == 409
    assert api.create_repo("test-user/model-a", exist_ok=True).repo_id == "test-user/model-a"

    with pytest.raises(HfHubHTTPError) as err:  # namespace the token does not own
        api.create_repo("someone-else/model")
    assert err.value.response.status_code == 403

    api.delete_repo("test-user/model-a")
    assert not api.repo_exists("test-user/model-a")
    with pytest.raises(RepositoryNotFoundError):
        api.delete_repo("test-user/model-a")
    api.delete_repo("test-user/model-a", missing_ok=True)


def test_upload_folder_list_and_snapshot_download(hub_server, tmp_path):
    api = hub_server.api()
    api.create_repo("test-org/quantized")
    folder = _make_folder(tmp_path)
    info = api.upload_folder(repo_id="test-org/quantized", folder_path=folder, commit_message="add model")
    assert len(info.oid) == 40 and info.oid == api.model_info("test-org/quantized").sha

    expected = {".gitattributes", "README.md", "config.json", "weights/blob.bin"}
    assert set(api.list_repo_files("test-org/quantized")) == expected
    siblings = {s.rfilename: s.size for s in api.model_info("test-org/quantized").siblings}
    assert siblings["weights/blob.bin"] == len(BINARY)
    assert api.file_exists("test-org/quantized", "weights/blob.bin")
    assert not api.file_exists("test-org/quantized", "weights/missing.bin")
    assert [b.name for b in api.list_repo_refs("test-org/quantized").branches] == ["main"]
    top = {entry.path for entry in api.list_repo_tree("test-org/quantized")}
    assert top == {".gitattributes", "README.md", "config.json", "weights"}
    assert [c.title for c in api.list_repo_commits("test-org/quantized")] == ["add model", "initial commit"]
    # The client was told "regular" for every file: contents went inline, no LFS / xet traffic.
    assert not [path for _, path in hub_server.requests if "lfs" in path or "xet" in path]

    # snapshot_download through the patched globals (no endpoint / token argument) into an empty cache.
    assert not any(Path(constants.HF_HUB_CACHE).iterdir())
    local = Path(snapshot_download("test-org/quantized"))
    assert local.is_relative_to(hub_server.cache_dir)
    assert local.name == info.oid
    for path in expected - {".gitattributes"}:
        assert (local / path).read_bytes() == (folder / path).read_bytes()
    assert hub_server.files("test-org/quantized")["weights/blob.bin"] == BINARY


def test_revisions_old_commit_and_deletion(hub_server):
    api = hub_server.api()
    api.create_repo("test-user/versions")
    first = api.upload_file(path_or_fileobj=b"v1", path_in_repo="value.txt", repo_id="test-user/versions")
    second = api.upload_file(path_or_fileobj=b"v2", path_in_repo="value.txt", repo_id="test-user/versions")
    assert first.oid != second.oid

    latest = hf_hub_download("test-user/versions", "value.txt")
    older = hf_hub_download("test-user/versions", "value.txt", revision=first.oid)
    assert Path(latest).read_bytes() == b"v2"
    assert Path(older).read_bytes() == b"v1"
    assert Path(snapshot_download("test-user/versions", revision=first.oid)).name == first.oid

    api.delete_file("value.txt", repo_id="test-user/versions")
    assert "value.txt" not in api.list_repo_files("test-user/versions")
    assert "value.txt" in api.list_repo_files("test-user/versions", revision=first.oid)

    with pytest.raises(EntryNotFoundError):
        hf_hub_download("test-user/versions", "value.txt", force_download=True)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("test-user/versions", "value.txt", revision="no-such-branch")


def test_writes_need_a_token_and_reads_of_public_repos_do_not(hub_server):
    hub_server.api().create_repo("test-user/public")
    anonymous = HfApi(endpoint=hub_server.endpoint, token=False)
    with pytest.raises(HfHubHTTPError) as err:
        anonymous.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="test-user/public")
    assert err.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as err:
        anonymous.create_repo("test-user/other")
    assert err.value.response.status_code == 401
    assert set(hub_server.files("test-user/public")) == {".gitattributes"}  # nothing was written
    assert anonymous.list_repo_files("test-user/public") == [".gitattributes"]


def test_private_repo_hidden_from_anonymous_readers(hub_server):
    hub_server.api().create_repo("test-user/secret", private=True)
    assert hub_server.api().model_info("test-user/secret").private is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub_server.endpoint, token=False).model_info("test-user/secret")


def test_missing_repo_and_file_raise_client_exceptions(hub_server):
    with pytest.raises(RepositoryNotFoundError):
        hub_server.api().model_info("test-user/does-not-exist")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("test-user/does-not-exist", "config.json")
    hub_server.api().create_repo("test-user/empty")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("test-user/empty", "config.json")


def test_simulated_commit_failure_stores_nothing(hub_server):
    api = hub_server.api()
    api.create_repo("test-user/flaky")
    head = api.model_info("test-user/flaky").sha
    hub_server.fail_commits = 500
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_file(path_or_fileobj=b"data", path_in_repo="model.bin", repo_id="test-user/flaky")
    assert err.value.response.status_code == 500
    assert hub_server.commit_attempts == 1
    assert api.model_info("test-user/flaky").sha == head
    assert api.list_repo_files("test-user/flaky") == [".gitattributes"]

    hub_server.fail_commits = None
    api.upload_file(path_or_fileobj=b"data", path_in_repo="model.bin", repo_id="test-user/flaky")
    assert hub_server.files("test-user/flaky")["model.bin"] == b"data"


def test_model_card_push_and_module_level_functions(hub_server, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", hub_server.token)  # module-level helpers pick the token up from the env
    huggingface_hub.create_repo("test-user/carded")
    card = ModelCard("---\nlicense: mit\nlibrary_name: infoq_hf\n---\n\n# Card\n")
    card.push_to_hub("test-user/carded")
    assert hub_server.files("test-user/carded")["README.md"].decode() == str(card)
    loaded = ModelCard.load("test-user/carded")
    assert loaded.data.license == "mit"
    with pytest.raises(ValueError, match="Invalid metadata"):
        huggingface_hub.upload_file(
            path_or_fileobj=b"---\n- not a mapping\n---\n", path_in_repo="README.md", repo_id="test-user/carded"
        )


def test_transformers_push_to_hub_and_from_pretrained(hub_server):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = tiny_gpt2(lm_head=False, vocab=100, positions=64)
    model.push_to_hub("test-user/tiny-gpt2", token=hub_server.token)
    assert {"config.json", "model.safetensors"} <= set(hub_server.files("test-user/tiny-gpt2"))

    loaded = transformers.AutoModel.from_pretrained("test-user/tiny-gpt2")
    assert type(loaded) is type(model)
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys()
    for name, tensor in original.items():
        assert torch.equal(tensor, reloaded[name]), name
    assert any(Path(constants.HF_HUB_CACHE).glob("models--test-user--tiny-gpt2/snapshots/*/model.safetensors"))
