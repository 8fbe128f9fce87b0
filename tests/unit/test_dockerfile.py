"""The GPU Dockerfile, checked without a Docker engine (none on these machines): its pins equal
pyproject.toml's, every path it copies exists, its base is a CUDA image of the CUDA version the
pinned torch wheels are built for, and `ray` is its command. The helpers are tested on bad
Dockerfiles too, so that each check can fail."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STACK = ("torch", "ray", "deepspeed", "transformers", "vllm")
# The PyPI wheels of torch 2.13.0 depend on cuda-toolkit 13.0.3 and nccl-cu13; vllm 0.32.0's on cu13 kernels.
CUDA_MAJOR = 13
_PIN = re.compile(r"(?<![\w.-])([A-Za-z][\w.-]*)(?:\[[^\]]*\])?==([0-9][^\s\"',;]*)")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comment lines dropped, backslash continuations joined."""
    out, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not current and not stripped):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, rest = current.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        current = ""
    return out


def build_args(text: str) -> dict[str, str]:
    return dict(rest.split("=", 1) for keyword, rest in instructions(text) if keyword == "ARG" and "=" in rest)


def expand(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), value)


def dockerfile_pins(text: str) -> dict[str, set[str]]:
    """Every version the file pins, per package: `ARG <PKG>_VERSION=x` and `pkg==x` in RUN lines."""
    args, pins = build_args(text), {}
    for name, value in args.items():
        if name.endswith("_VERSION"):
            pins.setdefault(name.removesuffix("_VERSION").lower(), set()).add(value)
    for keyword, rest in instructions(text):
        if keyword == "RUN":
            for package, version in _PIN.findall(expand(rest, args)):
                pins.setdefault(package.lower(), set()).add(version)
    return pins


def pyproject_pins(pyproject: dict) -> dict[str, str]:
    """The stack's pins in pyproject: the base dependencies, and vllm from the `gpu` extra."""
    specs = [*pyproject["project"]["dependencies"], *pyproject["project"]["optional-dependencies"]["gpu"]]
    return {package.lower(): version for spec in specs for package, version in _PIN.findall(spec)}


def pin_mismatches(text: str, expected: dict[str, str]) -> list[str]:
    found = dockerfile_pins(text)
    problems = []
    for package in STACK:
        if package not in found:
            problems.append(f"{package}: not pinned in the Dockerfile")
        elif found[package] != {expected[package]}:
            problems.append(f"{package}: Dockerfile pins {sorted(found[package])}, pyproject.toml {expected[package]}")
    return problems


def copied_sources(text: str) -> list[str]:
    """Source paths of COPY/ADD (not those copied from another build stage)."""
    sources = []
    for keyword, rest in instructions(text):
        if keyword not in ("COPY", "ADD"):
            continue
        parts = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
        flags = [p for p in parts if p.startswith("--")]
        if any(f.startswith("--from=") for f in flags):
            continue
        sources += [p for p in parts if not p.startswith("--")][:-1]
    return sources


def missing_sources(text: str, root: Path) -> list[str]:
    def present(source: str) -> bool:
        return any(root.glob(source)) if any(c in source for c in "*?[") else (root / source).exists()

    return [s for s in copied_sources(text) if not present(s)]


def base_image(text: str) -> tuple[str, str]:
    """(image, tag) of the final stage."""
    froms = [rest.split()[0] for keyword, rest in instructions(text) if keyword == "FROM"]
    image, _, tag = froms[-1].partition(":")
    return image, tag


def cuda_major(image: str, tag: str) -> int | None:
    """The CUDA major version of an nvidia/cuda tag (e.g. 13.0.0-devel-ubuntu22.04), else None."""
    match = re.match(r"(\d+)\.\d+(\.\d+)?-(cudnn\d*-)?(devel|runtime|base)-", tag)
    return int(match[1]) if image == "nvidia/cuda" and match else None


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


@pytest.fixture(scope="module")
def expected_pins() -> dict[str, str]:
    return pyproject_pins(tomllib.loads((ROOT / "pyproject.toml").read_text()))


def test_pyproject_pins_the_whole_stack(expected_pins):
    assert {p: expected_pins[p] for p in STACK} == {
        "torch": "2.13.0",
        "ray": "2.60.0",
        "deepspeed": "0.19.8",
        "transformers": "5.19.0",
        "vllm": "0.32.0",
    }


def test_dockerfile_pins_agree_with_pyproject(dockerfile, expected_pins):
    assert pin_mismatches(dockerfile, expected_pins) == []


def test_every_pin_has_a_reason_on_the_line_above(dockerfile):
    lines = dockerfile.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("ARG ") and line.split("=")[0].endswith("_VERSION"):
            assert lines[i - 1].startswith("#"), f"no comment above: {line}"


def test_every_copied_path_exists(dockerfile):
    assert copied_sources(dockerfile), "the project is copied in"
    assert missing_sources(dockerfile, ROOT) == []


def test_base_is_a_cuda_image_of_the_wheels_cuda(dockerfile):
    image, tag = base_image(dockerfile)
    assert cuda_major(image, tag) == CUDA_MAJOR, f"{image}:{tag}"


def test_ray_is_the_command_with_token_auth_and_the_project_is_installed(dockerfile):
    steps = instructions(dockerfile)
    (cmd,) = [json.loads(rest) for keyword, rest in steps if keyword == "CMD"]
    assert cmd[:2] == ["bash", "-c"]
    token, _, start = cmd[2].partition(" && ")
    assert token == "ray get-auth-token --generate > /dev/null" and start.startswith("exec ray start --head --block ")
    assert any(
        keyword == "ENV" and rest == "RAY_AUTH_MODE=token" for keyword, rest in steps
    )  # every Ray process of the image
    assert not any(keyword == "ENTRYPOINT" for keyword, _ in steps)
    assert any(keyword == "WORKDIR" for keyword, _ in steps)
    assert any(keyword == "RUN" and 'pip install -e ".[gpu' in rest for keyword, rest in steps)


# The checks fail on bad files.

GOOD = """# a comment
FROM nvidia/cuda:13.0.0-devel-ubuntu22.04 AS build
ARG TORCH_VERSION=2.13.0
RUN pip install "torch==${TORCH_VERSION}" \\
    "vllm==0.32.0" "ray[default,data]==2.60.0" deepspeed==0.19.8 transformers==5.19.0
COPY pyproject.toml README.md ./
COPY --from=build /opt/venv /opt/venv
"""
PINS = {"torch": "2.13.0", "ray": "2.60.0", "deepspeed": "0.19.8", "transformers": "5.19.0", "vllm": "0.32.0"}


def test_helpers_accept_a_good_file():
    assert dockerfile_pins(GOOD)["torch"] == {"2.13.0"} and dockerfile_pins(GOOD)["ray"] == {"2.60.0"}
    assert pin_mismatches(GOOD, PINS) == []
    assert copied_sources(GOOD) == ["pyproject.toml", "README.md"]
    assert missing_sources(GOOD, ROOT) == []
    assert cuda_major(*base_image(GOOD)) == 13


def test_a_disagreeing_or_missing_pin_is_reported():
    drifted = GOOD.replace("ARG TORCH_VERSION=2.13.0", "ARG TORCH_VERSION=2.12.1")
    assert pin_mismatches(drifted, PINS) == ["torch: Dockerfile pins ['2.12.1'], pyproject.toml 2.13.0"]
    twice = GOOD + 'RUN pip install "vllm==0.31.0"\n'  # a second, different pin of the same package
    assert pin_mismatches(twice, PINS) == ["vllm: Dockerfile pins ['0.31.0', '0.32.0'], pyproject.toml 0.32.0"]
    unpinned = GOOD.replace("deepspeed==0.19.8", "deepspeed")
    assert pin_mismatches(unpinned, PINS) == ["deepspeed: not pinned in the Dockerfile"]


def test_a_missing_copied_path_is_reported():
    assert missing_sources(GOOD + "COPY requirements-gpu.txt /tmp/\n", ROOT) == ["requirements-gpu.txt"]


def test_a_base_without_cuda_is_reported():
    assert cuda_major(*base_image("FROM python:3.11-slim\n")) is None
    assert cuda_major(*base_image("FROM nvidia/cuda:12.8.1-devel-ubuntu22.04\n")) == 12  # != CUDA_MAJOR
    assert cuda_major(*base_image("FROM ubuntu:22.04\n")) is None
