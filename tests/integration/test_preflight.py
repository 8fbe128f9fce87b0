"""The checks a launch makes before it starts anything, on the built toy assets: the policy and the
data are there, readable and non-empty. Through `--dry-run` (launch.main in this process) and once
through a real launch: exit 2, one line naming the key or file, no run directory."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import launch
from tests.integration.conftest import ROOT


@pytest.fixture
def dry_run(tmp_path, toy_assets, capsys, monkeypatch):
    monkeypatch.delenv("WAVALIGN_REWARD_API_BASE", raising=False)

    def run(*overrides: str) -> tuple[int, str, str]:
        sets = [f"toy.assets_dir={toy_assets.root}", f"run.output_dir={tmp_path / 'runs'}", *overrides]
        code = launch.main(
            ["--config", str(ROOT / "pipeline.yaml"), *(a for s in sets for a in ("--set", s)), "--dry-run"]
        )
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_a_dry_run_on_built_assets_checks_policy_and_data_and_writes_nothing(dry_run, tmp_path):
    code, out, err = dry_run()
    assert code == 0 and out.startswith("run:") and err == "", err
    assert not (tmp_path / "runs").exists()


CASES = [
    "missing train file",
    "empty train file",
    "only other task types",
    "no usable eval rows",
    "missing policy",
    "bad row",
    "fewer rows than a step's prompts",
    "offline DPO without pairs",
]


@pytest.mark.parametrize("case", CASES)
def test_missing_or_empty_inputs_are_one_line(dry_run, tmp_path, toy_assets, case):
    train = toy_assets.data_file("train", ".jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    good = train.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        "\n".join([good[0], good[1].replace('"prompt_token_ids": [', '"prompt_token_ids": [99999, '), good[2]]) + "\n"
    )
    other = tmp_path / "other.jsonl"
    other.write_text("".join(line.replace('"task_type": "s2s"', '"task_type": "asr"') + "\n" for line in good))
    overrides, expected = {
        "missing train file": (["data.train_files=[/no/such.jsonl]"], "/no/such.jsonl: data file not found"),
        "empty train file": ([f"data.train_files=[{empty}]"], f"{empty}: no rows (the file is empty)"),
        "only other task types": ([f"data.train_files=[{other}]"], f"data.train_files: no usable rows in {other}"),
        "no usable eval rows": (
            [f"data.eval_files=[{other}]", "train.eval_every=5"],
            f"data.eval_files: no usable rows in {other} (train.eval_every: 0 runs without evaluation)",
        ),
        "missing policy": (
            ["model.path=/no/such/model", f"data.train_files=[{train}]"],
            "model.path: /no/such/model is not an HF model directory (no config.json)",
        ),
        "bad row": (
            [f"data.train_files=[{bad}]"],
            f"{bad}: row 2: field 'prompt_token_ids': position 0: token id 99999",
        ),
        "offline DPO without pairs": (
            ["algorithm.objective=dpo", "algorithm.dpo_pairs=offline"],
            "algorithm.dpo_pairs: offline needs rejected_token_ids in every train row; 93 of 93 have none",
        ),
        "fewer rows than a step's prompts": (
            [f"data.train_files=[{bad}]", "data.skip_invalid_rows=true"],
            "train.rollout_batch_size: 32 responses are 8 prompts per step; the train data has 2 usable rows",
        ),
    }[case]
    code, out, err = dry_run(*overrides)
    *notes, error = err.strip().splitlines()
    assert code == 2 and out == "" and error.startswith("error: ") and expected in error, err
    assert all(note.startswith(("data: left out", "data: skipped")) for note in notes), notes  # counted, not lost
    assert not (tmp_path / "runs").exists()


def test_a_real_launch_fails_its_start_checks_before_creating_anything(tmp_path, toy_assets):
    env = {k: v for k, v in os.environ.items() if k != "WAVALIGN_REWARD_API_BASE"}
    runs = tmp_path / "runs"
    done = subprocess.run(
        [
            sys.executable,
            "launch.py",
            "--config",
            "pipeline.yaml",
            "--set",
            f"toy.assets_dir={toy_assets.root}",
            "--set",
            f"run.output_dir={runs}",
            "--set",
            "reward.functions=[{name: judge}]",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == "", done.stdout + done.stderr
    assert done.stderr.strip() == "error: reward.judge.url: not set, and $WAVALIGN_REWARD_API_BASE is empty"
    assert not runs.exists()  # no run directory holding only config.yaml


def test_a_checkpoint_with_its_own_code_and_extra_heads_needs_its_settings(dry_run, tmp_path, toy_assets, capsys):
    """The MTP model (wavalign/toy/families.py: its own modeling code, heads vLLM lacks): without
    model.trust_remote_code, and with an extra_modules prefix that names nothing, the dry run says
    so in one line; with the family's settings it passes."""
    from wavalign.toy.families import REMOTE_CODE_SETTINGS, save_family_model

    model = save_family_model("mtp_qwen2", toy_assets.model_dir, tmp_path / "mtp")
    capsys.readouterr()  # (what the build printed)
    base = [
        f"model.path={model}",
        f"data.train_files=[{toy_assets.data_file('train', '.jsonl')}]",
        "train.eval_every=0",
    ]
    settings = REMOTE_CODE_SETTINGS["mtp_qwen2"]
    own = [f"model.vllm_architecture={settings['vllm_architecture']}", "model.trust_remote_code=true"]
    for overrides, expected in (
        (base, f"error: model.path: {model} ships its own modeling code (config.json auto_map)"),
        (
            [*base, *own, "model.extra_modules=[heads.]"],
            f"error: model.extra_modules: 'heads.' names no tensor of {model}",
        ),
    ):
        code, out, err = dry_run(*overrides)
        assert code == 2 and err.startswith(expected) and len(err.strip().splitlines()) == 1, err
    code, _, err = dry_run(*base, *own, "model.extra_modules=[mtp_heads.]")
    assert code == 0, err


def closed_port() -> int:
    from wavalign.ports import free_port

    return free_port()  # free now: nothing listens there


@pytest.mark.parametrize("named_by", ["--address", "RAY_ADDRESS"])
def test_a_cluster_address_nothing_answers_at_is_one_line_before_anything_is_written(
    tmp_path, toy_assets, capsys, monkeypatch, named_by
):
    address = f"127.0.0.1:{closed_port()}"
    sets = [f"toy.assets_dir={toy_assets.root}", f"run.output_dir={tmp_path / 'runs'}"]
    argv = ["--config", str(ROOT / "pipeline.yaml"), *(a for s in sets for a in ("--set", s))]
    if named_by == "--address":
        argv += ["--address", address]
    else:
        monkeypatch.setenv("RAY_ADDRESS", address)
    code = launch.main(argv)  # a real launch: it would write the run folder next
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == (
        f"error: {named_by} {address}: no Ray cluster answers at {address} (Connection refused); "
        "start one there (`ray start --head`), or name none for a local cluster"
    )
    assert not (tmp_path / "runs").exists()


def test_a_cluster_that_never_lets_the_driver_in_ends_it_with_one_line_within_the_join_deadline():
    """A port that accepts connections but is no GCS that lets this driver in (as a token cluster
    does to a driver without the token): ray.init would retry for minutes; the driver's deadline
    ends it with one line, exit 2."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        code = f"from driver.inputs import connect_ray; connect_ray('127.0.0.1:{port}', join_timeout_s=3)"
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: Ray cluster 127.0.0.1:{port}: not joined within 3s")


@pytest.mark.parametrize("command", [["status"], ["scale", "--workers", "2"]])
def test_operator_commands_against_an_address_nothing_answers_at_are_one_line(capsys, command):
    address = f"127.0.0.1:{closed_port()}"
    assert launch.main([*command, "--address", address]) == 1
    assert capsys.readouterr().out.strip() == (
        f"error: --address {address}: no Ray cluster answers at {address} (Connection refused); "
        "start one there (`ray start --head`), or name none for a local cluster"
    )
