"""Layering: pure modules import no heavy dependency; the installed stack imports."""

import json
import subprocess
import sys

import pytest

PURE_MODULES = [
    "wavalign.config",
    "wavalign.layout",
    "wavalign.interleave",
    "wavalign.atomic",
    "wavalign.failpoints",
    "wavalign.data",
    "wavalign.toy.cache",
    "wavalign.toy.codec",
    "wavalign.toy.task",
    "wavalign.toy.rows",
    "wavalign.toy.metrics",
    "learner.masks",
    "learner.advantages",
    "learner.mixing",
    "learner.loss",
    "learner.dpo",
    "learner.dpo_pairs",
    "learner.diagnostics",
    "learner.schedule",
    "learner.step_stats",
    "wavalign.pipeline.prompts",
    "rewards.types",
    "rewards.toy",
    "rewards.scores",
    "rewards.judge_reply",
    "rewards.speech",
    "rewards.wav",
]
HEAVY = ["ray", "vllm", "deepspeed", "transformers", "pyarrow", "aiohttp", "requests"]


@pytest.fixture(scope="module")
def fresh_imports() -> dict:
    """One fresh interpreter imports the pure modules one after another (a heavy module once imported
    stays in sys.modules, so the first pure module that brings one in is the one named), then the
    whole stack, and reports both."""
    code = (
        "import importlib, json, sys\n"
        f"heavy, seen = {HEAVY!r}, {{}}\n"
        f"for module in {PURE_MODULES!r}:\n"
        "    importlib.import_module(module)\n"
        "    seen[module] = [m for m in heavy if m in sys.modules]\n"
        "print('PURE', json.dumps(seen), flush=True)\n"
        "import transformers.models.qwen2.modeling_qwen2 as q; q.Qwen2ForCausalLM\n"
        "import vllm, ray, deepspeed, pyarrow, pydantic\n"
        "print('STACK', json.dumps([vllm.__version__, ray.__version__, deepspeed.__version__]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    found = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.startswith(("PURE ", "STACK ")))
    return {"returncode": out.returncode, "stderr": out.stderr[-3000:], **{k: json.loads(v) for k, v in found.items()}}


def test_pure_modules_import_nothing_heavy(fresh_imports):
    assert "PURE" in fresh_imports, fresh_imports["stderr"]
    seen = fresh_imports["PURE"]
    assert list(seen) == PURE_MODULES
    offenders = [(module, heavy) for module, heavy in seen.items() if heavy]
    assert not offenders, f"{offenders[0][0]} imported {offenders[0][1]}"


def test_the_stack_imports(fresh_imports):
    """Fails when the install left a broken stack (e.g. PyPI torchvision beside torch+cpu breaks Qwen2)."""
    assert fresh_imports["returncode"] == 0, fresh_imports["stderr"]
    assert fresh_imports["STACK"] == ["0.32.0", "2.60.0", "0.19.8"]


def test_asset_cache_key_follows_settings_not_location():
    from wavalign.config import LayoutConfig, ToyConfig
    from wavalign.toy.cache import fingerprint

    base = fingerprint(ToyConfig(), LayoutConfig())
    assert fingerprint(ToyConfig(assets_dir="/elsewhere"), LayoutConfig()) == base
    assert fingerprint(ToyConfig(seed=7), LayoutConfig()) != base
    assert fingerprint(ToyConfig(warm_start={"min_steps": 10}), LayoutConfig()) != base
    assert fingerprint(ToyConfig(), LayoutConfig(interleave_ratio=[1, 4])) != base
