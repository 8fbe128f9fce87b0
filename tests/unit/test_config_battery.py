"""Malformed configs as users write them, each through `launch.py --dry-run` (its `main`, in this
process): exit 2, one line on stderr that names the key path (or file, or override) and the bad
value, nothing on stdout, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

import launch

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = (ROOT / "pipeline.yaml").read_text()

# (case, config file text (None = pipeline.yaml), overrides, what the one line says)
CASES = [
    ("empty file", "", [], "the file is empty"),
    ("only comments", "# nothing yet\n", [], "the file is empty"),
    ("a list at the top", "- run\n- model\n", [], "the top level must be a mapping of sections, got a list"),
    ("not YAML", "run: [unclosed\n", [], "not valid YAML (expected ',' or ']'"),
    ("a section twice", PIPELINE + "run:\n  steps: 3\n", [], "key 'run' appears twice in one mapping (first on line"),
    (
        "a key twice",
        "run:\n  steps: 3\n  steps: 4\n",
        [],
        "key 'steps' appears twice in one mapping (first on line 2) at line 3",
    ),
    ("an unknown section", "runs:\n  steps: 3\n", [], "runs: Extra inputs are not permitted"),
    (
        "a typo in a key",
        None,
        ["rollout.temprature=0.5"],
        "rollout.temprature: Extra inputs are not permitted (got 0.5)",
    ),
    ("--set value not YAML", None, ["run.name=[oops"], "--set 'run.name=[oops': the value is not valid YAML"),
    ("--set without =", None, ["run.steps"], "--set 'run.steps': expected key.path=value"),
    (
        "--set into a value",
        None,
        ["run.steps.x=1"],
        "--set 'run.steps.x=1': run.steps.x: 'steps' is a value, not a section",
    ),
    (
        "inf learning rate",
        None,
        ["learner.learning_rate=inf"],
        "learner.learning_rate: Input should be a valid number (got 'inf')",
    ),
    (
        "YAML inf learning rate",
        None,
        ["learner.learning_rate=.inf"],
        "learner.learning_rate: Input should be a finite number (got inf)",
    ),
    (
        "nan temperature",
        None,
        ["rollout.temperature=.nan"],
        "rollout.temperature: Input should be a finite number (got nan)",
    ),
    ("inf scale_max", None, ["reward.scale_max=.inf"], "reward.scale_max: Input should be a finite number (got inf)"),
    (
        "inf gate slope",
        None,
        ["algorithm.gate_slope=.inf"],
        "algorithm.gate_slope: Input should be a finite number (got inf)",
    ),
    (
        "inf KL beta",
        None,
        ["algorithm.kl_beta_speech=.inf"],
        "algorithm.kl_beta_speech: Input should be a finite number (got inf)",
    ),
    (
        "inf judge timeout",
        None,
        ["reward.judge.timeout_s=.inf"],
        "reward.judge.timeout_s: Input should be a finite number (got inf)",
    ),
    (
        "a timeout of 30 years",
        None,
        ["rollout.timeout_s=1e9"],
        "rollout.timeout_s: Input should be less than or equal to 604800 (got 1000000000.0)",
    ),
    (
        "a beta of 1.5",
        None,
        ["learner.adam_betas=[0.9, 1.5]"],
        "learner.adam_betas: each beta must lie in [0, 1), got [0.9, 1.5]",
    ),
    ("one beta", None, ["learner.adam_betas=[0.9]"], "learner.adam_betas.1: Field required"),
    (
        "a bool for a count",
        None,
        ["learner.num_workers=true"],
        "learner.num_workers: Input should be a valid integer (got true)",
    ),
    (
        "a string for a count",
        None,
        ["rollout.group_size='4'"],
        "rollout.group_size: Input should be a valid integer (got '4')",
    ),
    ("a fraction for a count", None, ["run.steps=1.5"], "run.steps: Input should be a valid integer (got 1.5)"),
    (
        "a number for a bool",
        None,
        ["rollout.reproducible=1"],
        "rollout.reproducible: Input should be a valid boolean (got 1)",
    ),
    ("a number for a name", None, ["run.name=123"], "run.name: Input should be a valid string (got 123)"),
    (
        "min above max steps",
        None,
        ["toy.warm_start.min_steps=2000"],
        "toy.warm_start.min_steps: 2000 > max_steps (1500)",
    ),
    (
        "no eval samples",
        None,
        ["train.eval_repeats=0"],
        "train.eval_repeats: Input should be greater than or equal to 1",
    ),
    (
        "an unknown wrong answer",
        None,
        ["toy.warm_start.wrong_answer=sometimes"],
        "toy.warm_start.wrong_answer: Input should be 'nearby', 'next', 'left_operand' or 'hedge' (got 'sometimes')",
    ),
    (
        "unknown warm-start questions",
        None,
        ["toy.warm_start.questions=some"],
        "toy.warm_start.questions: Input should be 'train' or 'all' (got 'some')",
    ),
    ("a name that climbs out", None, ["run.name=../../x"], "run.name: '../../x' is not a plain name"),
    ("a name with a slash", None, ["run.name=a/b"], "run.name: 'a/b' is not a plain name"),
    ("a hidden name", None, ["run.name=.x"], "run.name: '.x' is not a plain name"),
    (
        "a judge URL that is not HTTP",
        None,
        ["reward.judge.url=ftp://judge/v1"],
        "reward.judge.url: 'ftp://judge/v1' is not an http(s)://host[:port]/path URL",
    ),
    (
        "a WAV rate of 0",
        None,
        ["reward.judge.wav_header_rate=0"],
        "reward.judge.wav_header_rate: Input should be greater than or equal to 1 (got 0)",
    ),
    (
        "no task types",
        None,
        ["data.task_types=[]"],
        "data.task_types: List should have at least 1 item after validation, not 0 (got [])",
    ),
    ("top_p 0", None, ["rollout.top_p=0"], "rollout.top_p: Input should be greater than 0 (got 0)"),
    ("EMA alpha 1", None, ["algorithm.ema_alpha=1"], "algorithm.ema_alpha: Input should be less than 1 (got 1)"),
    (
        "ZeRO stage 4",
        None,
        ["learner.zero_stage=4"],
        "learner.zero_stage: Input should be less than or equal to 3 (got 4)",
    ),
    (
        "an unknown objective",
        None,
        ["algorithm.objective=ppo"],
        "algorithm.objective: Input should be 'wavalign' or 'dpo' (got 'ppo')",
    ),
    (
        "a batch that splits no groups",
        None,
        ["train.rollout_batch_size=10"],
        "train.rollout_batch_size: 10 is not divisible by rollout.group_size (4)",
    ),
    (
        "a default score off the scale",
        None,
        ["reward.default_score=9"],
        "reward.default_score: 9.0 lies outside [scale_min, scale_max]",
    ),
    (
        "a DPO gap below zero",
        None,
        ["algorithm.objective=dpo", "algorithm.dpo_min_score_gap=-1"],
        "algorithm.dpo_min_score_gap: Input should be greater than or equal to 0 (got -1)",
    ),
    (
        "a judge with no URL",
        None,
        ["reward.functions=[{name: judge}]", "reward.judge.url=null"],
        "reward.judge.url: not set, and $WAVALIGN_REWARD_API_BASE is empty",
    ),
    (
        "a reward model that is not there",
        None,
        ["reward.functions=[{name: reward_model}]", "reward.reward_model_path=/nope"],
        "reward.reward_model_path: /nope is not an HF model directory (no config.json)",
    ),
    (
        "an extra module that is not a name prefix",
        None,
        ["model.extra_modules=['mtp heads']"],
        "model.extra_modules: 'mtp heads' is not a parameter-name prefix (e.g. 'mtp_heads.')",
    ),
    (
        "the ASR reward without a decoder",
        None,
        ["reward.functions=[{name: asr_consistency}]", "reward.speech_decoder=none"],
        "reward.speech_decoder: 'asr_consistency' transcribes the decoded speech: it needs a decoder",
    ),
    (
        "an ASR backend that is not an import path",
        None,
        ["reward.asr.backend=whisper"],
        "reward.asr.backend: 'whisper'",
    ),
    (
        "a vLLM architecture that is not a class name",
        None,
        ["model.vllm_architecture=qwen2-7b"],
        "model.vllm_architecture: 'qwen2-7b' is not a class name",
    ),
]


@pytest.mark.parametrize("text,overrides,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_malformed_config_is_one_line_naming_key_and_value(tmp_path, capsys, monkeypatch, text, overrides, expected):
    monkeypatch.delenv("WAVALIGN_REWARD_API_BASE", raising=False)
    config = tmp_path / "c.yaml"
    config.write_text(PIPELINE if text is None else text)
    runs = tmp_path / "runs"
    sets = [a for o in [f"run.output_dir={runs}", *overrides] for a in ("--set", o)]
    code = launch.main(["--config", str(config), *sets, "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "", (code, out)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert not runs.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_file_level_problems_name_the_file(tmp_path, capsys):
    (tmp_path / "latin1.yaml").write_bytes("run:\n  name: caf\xe9\n".encode("latin-1"))
    (tmp_path / "folder.yaml").mkdir()
    for name, expected in [
        ("latin1.yaml", "latin1.yaml: not UTF-8 text (byte 0xe9 at offset"),
        ("folder.yaml", "folder.yaml is not a file"),
        ("missing.yaml", "missing.yaml not found"),
    ]:
        assert launch.main(["--config", str(tmp_path / name), "--dry-run"]) == 2
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1 and expected in err, err


def test_yaml_1_2_numbers_are_numbers(tmp_path):
    from wavalign.config_file import read_config

    cfg = read_config(
        ROOT / "pipeline.yaml", ["learner.learning_rate=1e-6", "learner.adam_eps=1E-8", "rollout.temperature=.5"]
    )
    assert (cfg.learner.learning_rate, cfg.learner.adam_eps, cfg.rollout.temperature) == (1e-6, 1e-8, 0.5)


def test_a_judge_url_from_the_environment_is_checked_like_the_configs(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WAVALIGN_REWARD_API_BASE", "judge.internal:8000/v1")  # no scheme
    code = launch.main(
        [
            "--config",
            str(ROOT / "pipeline.yaml"),
            "--set",
            f"run.output_dir={tmp_path / 'runs'}",
            "--set",
            "reward.functions=[{name: judge}]",
            "--set",
            "reward.judge.url=null",
            "--dry-run",
        ]
    )
    out, err = capsys.readouterr()
    assert (
        code == 2
        and out == ""
        and err.strip()
        == (
            "error: reward.judge.url: $WAVALIGN_REWARD_API_BASE: 'judge.internal:8000/v1' "
            "is not an http(s)://host[:port]/path URL"
        )
    )
    assert not (tmp_path / "runs").exists()
