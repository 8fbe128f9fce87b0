"""The config tree: pipeline.yaml mirrors it; bad configs fail naming the key path; --dry-run."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from wavalign.config import InvalidConfig, PipelineConfig, Section
from wavalign.config_file import config_yaml, read_config

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "pipeline.yaml"


def keys_of(model: type[Section], prefix=""):
    out = set()
    for name, info in model.model_fields.items():
        out.add(prefix + name)
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, Section):
            out |= keys_of(sub, f"{prefix}{name}.")
    return out


def keys_of_tree(tree, prefix=""):
    out = set()
    for name, value in tree.items():
        out.add(prefix + name)
        if isinstance(value, dict):
            out |= keys_of_tree(value, f"{prefix}{name}.")
    return out


def test_pipeline_yaml_mirrors_the_tree_key_for_key():
    tree = yaml.safe_load(PIPELINE.read_text())
    assert keys_of_tree(tree) == keys_of(PipelineConfig)


def test_resolved_config_round_trips():
    cfg = read_config(PIPELINE)
    again = PipelineConfig.model_validate(yaml.safe_load(config_yaml(cfg)))
    assert again == cfg


def problems(tmp_path, overrides=(), tree=None):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree if tree is not None else yaml.safe_load(PIPELINE.read_text())))
    with pytest.raises(InvalidConfig) as err:
        read_config(path, list(overrides))
    return err.value.problems


@pytest.mark.parametrize(
    "override,expected",
    [
        ("rollout.temprature=0.5", "rollout.temprature: Extra inputs are not permitted"),
        ("model.layout.colour=red", "model.layout.colour: Extra inputs are not permitted"),
        ("rollout.group_size=many", "rollout.group_size: Input should be a valid integer"),
        ("rollout.top_p=1.5", "rollout.top_p: Input should be less than or equal to 1"),
        ("rollout.group_size=5", "train.rollout_batch_size: 32 is not divisible by rollout.group_size (5)"),
        ("learner.num_workers=3", "learner.num_workers: 8 prompts per step cannot be split evenly"),
        (
            "rollout.max_new_tokens=500",
            "model.max_model_len: 256 < data.max_prompt_tokens + rollout.max_new_tokens (628)",
        ),
        ("model.layout.interleave_ratio=[1,2,3]", "model.layout.interleave_ratio: expected (text, audio) pairs"),
        ("model.layout.interleave_ratio=[2,2]", "model.layout.interleave_ratio: audio block sizes must be >= 3"),
        ("model.layout.speech_token_format=audio", "model.layout.speech_token_format: must contain '{i}'"),
        (
            "model.layout.preset=glm4voice",
            "model.layout.preset: the tiny model (model.path: null) uses the 'tiny' layout",
        ),
        ("model.path=/ckpt", "data.train_files: the toy data fits only the tiny model"),
        ("toy.min_word_tokens=5", "toy.min_word_tokens: 5 > max_word_tokens (4)"),
        ("toy.warm_start.correct_rate_min=0.95", "toy.warm_start.correct_rate_min: 0.95 > correct_rate_max (0.9)"),
        ("reward.default_score=9", "reward.default_score: 9.0 lies outside [scale_min, scale_max]"),
        ("run=3", "run: Input should be a valid dictionary"),
        (
            "reward.functions=[{name: toy_answer, weight: 0.5}]",
            "reward.functions: weights sum to 0.5; they must sum to 1",
        ),
        ("reward.functions=[]", "reward.functions: at least one reward function is needed"),
        (
            "reward.functions=[{name: judge, weight: 0.5}, {name: judge, weight: 0.5}]",
            "reward.functions: each function at most once",
        ),
        ("reward.functions=[{name: reward_model}]", "reward.reward_model_path: required when 'reward_model'"),
        ("reward.functions=[{name: bleu}]", "reward.functions.0.path: 'bleu' is not a built-in reward function"),
        ("reward.functions=[{name: bad-name, path: 'a:b'}]", "reward.functions.0.name: 'bad-name' is not a plain name"),
        ("reward.functions=[{name: wer, path: my_pkg.wer}]", "reward.functions.0.path: 'my_pkg.wer' is not an import"),
        ("reward.functions=[{name: judge, kwargs: {a: 1}}]", "reward.functions.0.kwargs: the built-in 'judge' takes"),
        ("reward.functions=[{name: judge, path: 'a:b'}]", "reward.functions.0.name: 'judge' is a built-in's name"),
        ("reward.speech_decoder=vocoder", "reward.speech_decoder.path: 'vocoder' is not an import path"),
        ("reward.speech_decoder={path: toy, kwargs: {rate: 1}}", "reward.speech_decoder.kwargs: the built-in"),
        ("run.runtime_env.py_modules=plugins", "run.runtime_env.py_modules: Input should be a valid list"),
        ("run.runtime_env.conda=x", "run.runtime_env.conda: Extra inputs are not permitted"),
        ("reward.judge.out_of_range=ignore", "reward.judge.out_of_range: Input should be 'default' or 'clamp'"),
    ],
)
def test_bad_configs_name_the_key_path(tmp_path, override, expected):
    assert any(p.startswith(expected) for p in problems(tmp_path, [override])), problems(tmp_path, [override])


def test_two_judges_weights_must_sum_to_one(tmp_path):
    cfg = read_config(PIPELINE, ["reward.judge.mode=two_judges"])
    assert (cfg.reward.judge.semantic_weight, cfg.reward.judge.acoustic_weight) == (0.7, 0.3)
    found = problems(tmp_path, ["reward.judge.mode=two_judges", "reward.judge.acoustic_weight=0.5"])
    assert any(p.startswith("reward.judge.semantic_weight: semantic_weight + acoustic_weight must be 1") for p in found)


def test_custom_layout_needs_every_field(tmp_path):
    found = problems(tmp_path, ["model.layout.preset=custom", "model.path=/x", "data.train_files=[a.jsonl]"])
    assert any(p.startswith("model.layout.") and "needs every layout field" in p for p in found), found


def test_launch_dry_run_prints_the_resolved_config_and_writes_nothing(tmp_path):
    """The CLI as operators run it (a subprocess); its error cases: test_config_battery.py (in process)
    and integration/test_preflight.py (a real launch, exit 2)."""
    runs = tmp_path / "runs"
    ok = subprocess.run(
        [sys.executable, "launch.py", "--config", "pipeline.yaml", "--set", f"run.output_dir={runs}", "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert PipelineConfig.model_validate(yaml.safe_load(ok.stdout)) == read_config(PIPELINE, [f"run.output_dir={runs}"])
    assert not runs.exists()  # a dry run starts nothing and writes nothing
