"""Pytest fixture ``hub_server``: a loopback Hub that huggingface_hub and transformers talk to.

huggingface_hub reads its endpoint once, at import, from ``HF_ENDPOINT`` into
``constants.ENDPOINT`` and ``constants.HUGGINGFACE_CO_URL_TEMPLATE`` (the latter builds every
``/resolve/`` URL when no explicit endpoint is passed, e.g. by transformers). Two objects also
captured it: the module-level ``huggingface_hub.hf_api.api`` behind ``huggingface_hub.create_repo``,
``upload_file``, ... and transformers' lazily created shared ``HfApi`` (``transformers.utils.hub._hf_api``).
Cache, token and offline settings are likewise read at import into ``constants``. Setting environment
variables alone is therefore too late in a running process: the fixture patches those module attributes
(and the environment variables, for subprocesses) with ``monkeypatch``, which restores them afterwards.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from huggingface_hub import constants, hf_api

from tests.helpers.hub_server import HubServer


def point_clients_at(endpoint: str, hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Route huggingface_hub (and transformers) to ``endpoint`` with an empty cache under ``hf_home``."""
    hub_cache = hf_home / "hub"
    hub_cache.mkdir(parents=True, exist_ok=True)

    # Environment, for anything that reads it at call time and for subprocesses.
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for name in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_OIDC_RESOURCE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_HUB_DISABLE_XET",
    ):
        monkeypatch.delenv(name, raising=False)

    # Values huggingface_hub computed at import time.
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {urlsplit(endpoint).hostname})
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HUGGINGFACE_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_ASSETS_CACHE", str(hf_home / "assets"))
    monkeypatch.setattr(constants, "HF_XET_CACHE", str(hf_home / "xet"))
    # No stored login token leaks in from the real home folder.
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(hf_home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(hf_home / "stored_tokens"))
    # Objects that captured the endpoint at creation.
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)
    if importlib.util.find_spec("transformers") is not None:
        import transformers.utils.hub as transformers_hub

        monkeypatch.setattr(transformers_hub, "_hf_api", None)  # re-created from constants.ENDPOINT on use


@pytest.fixture
def hub_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A running :class:`HubServer` on 127.0.0.1; the Hub clients point at it for the test's duration.

    Yields the server: ``.endpoint``, ``.token`` (valid write token for user ``.user``, who also
    belongs to org ``test-org``), ``.api()`` (an authenticated ``HfApi``), ``.files(repo_id, revision)``,
    ``.commits(repo_id)``, ``.fail_commits``, ``.requests`` and ``.cache_dir`` (the empty HF hub cache).
    No token is configured globally: pass ``token=hub_server.token`` or ``monkeypatch.setenv("HF_TOKEN", ...)``.
    """
    server = HubServer(tmp_path / "hub-storage").start()
    server.cache_dir = tmp_path / "hf-home" / "hub"
    point_clients_at(server.endpoint, tmp_path / "hf-home", monkeypatch)
    try:
        yield server
    finally:
        server.stop()
