"""Fixtures every test can ask for by name: the loopback Hub (`hub_server`).

The tiny-model builders are plain functions in `tests.helpers.models`: `from tests.helpers.models import tiny_llama`.
"""

from tests.helpers.hub_fixtures import hub_server  # noqa: F401  (the loopback Hub fixture)
