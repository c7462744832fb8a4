"""Peer GPTQ side by side (run in its own venv; see setup.sh)."""
