"""Layering: pure modules import no heavy dependency; the installed stack imports."""

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
    "rewards.speech",
    "rewards.wav",
]
HEAVY = ["ray", "vllm", "deepspeed", "transformers", "pyarrow", "aiohttp", "requests"]


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports_nothing_heavy(module):
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"{module} imported {out.stdout.strip()}"


def test_the_stack_imports():
    """Fails when the install left a broken stack (e.g. PyPI torchvision beside torch+cpu breaks Qwen2)."""
    code = (
        "import transformers.models.qwen2.modeling_qwen2 as q; q.Qwen2ForCausalLM; "
        "import vllm, ray, deepspeed, pyarrow, pydantic; print(vllm.__version__, ray.__version__, deepspeed.__version__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-3:] == ["0.32.0", "2.60.0", "0.19.8"]


def test_asset_cache_key_follows_settings_not_location():
    from wavalign.config import LayoutConfig, ToyConfig
    from wavalign.toy.assets import fingerprint

    base = fingerprint(ToyConfig(), LayoutConfig())
    assert fingerprint(ToyConfig(assets_dir="/elsewhere"), LayoutConfig()) == base
    assert fingerprint(ToyConfig(seed=7), LayoutConfig()) != base
    assert fingerprint(ToyConfig(warm_start={"min_steps": 10}), LayoutConfig()) != base
    assert fingerprint(ToyConfig(), LayoutConfig(interleave_ratio=[1, 4])) != base
