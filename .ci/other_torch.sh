#!/usr/bin/env bash
# infoq-hf on a torch other than constraints.txt's: a fresh virtual environment gets that torch first,
# then infoq-hf and its dev extras are installed around it (torch must not be replaced), then the fast
# test suite runs. Shows that the lower bounds in pyproject.toml install and pass.
#
# Usage: .ci/other_torch.sh VENV_DIR
#   TORCH        torch requirement (or wheel file) to test   (default: torch==2.13.0, the lower bound)
#   TORCHVISION  the torchvision built for it        (default: torchvision==0.28.0)
#   PINS         more requirements that override constraints.txt, space-separated, e.g. the oldest
#                transformers: "transformers==5.0.0 huggingface-hub<2 tokenizers<=0.23.0"
#   TEST_PREFIX  a command the test run is wrapped in (e.g. "flock /tmp/some.lock"); default none
# VENV_DIR must not exist yet (nothing of yours is overwritten).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:?"usage: .ci/other_torch.sh VENV_DIR (a folder that does not exist yet)"}
if [ -e "$venv" ]; then
  echo "error: $venv exists; name a new folder" >&2
  exit 2
fi
torch_req=${TORCH:-torch==2.13.0}
vision_req=${TORCHVISION:-torchvision==0.28.0}
pins=${PINS:-}

python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
# shellcheck disable=SC2086
"$venv/bin/pip" install -q "$torch_req" "$vision_req" $pins
before=$("$venv/bin/python" -c 'import torch; print(torch.__version__)')

# constraints.txt less every package chosen above or installed with them, plus what is installed now,
# held fixed (torch and the libraries it brought)
"$venv/bin/pip" list --format=freeze > "$venv/installed.txt"
"$venv/bin/python" - "$venv/constraints.txt" "$venv/installed.txt" "$torch_req" "$vision_req" $pins <<'EOF'
import re, sys
out, installed, *chosen = sys.argv[1:]
def name(req):  # a requirement's project name; for a wheel file, the part of its file name before "-"
    req = req.rsplit("/", 1)[-1].split("-", 1)[0] if req.endswith(".whl") else req
    return re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower().replace("_", "-")
held = [line for line in open(installed) if line.strip() and name(line) not in {"pip", "setuptools"}]
skip = {name(r) for r in chosen} | {name(line) for line in held}
kept = [line for line in open("constraints.txt") if not line.startswith("#") and line.strip()
        and name(line) not in skip]
open(out, "w").write("".join(kept + held))
EOF
"$venv/bin/pip" install -q -e ".[dev]" -c "$venv/constraints.txt"
after=$("$venv/bin/python" -c 'import torch; print(torch.__version__)')
if [ "$before" != "$after" ]; then
  echo "error: installing infoq-hf replaced torch $before with $after" >&2
  exit 1
fi
echo "torch $after kept; versions under test:"
"$venv/bin/pip" freeze | grep -iE '^(torch|torchvision|transformers|huggingface.hub|timm|accelerate)=='
# shellcheck disable=SC2086
${TEST_PREFIX:-} "$venv/bin/python" -m pytest -q
