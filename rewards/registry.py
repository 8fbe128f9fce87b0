"""Building the configured reward functions (by name) from the config."""

from __future__ import annotations

import os

from rewards.judge import ACOUSTIC_RUBRIC, HOLISTIC_RUBRIC, SEMANTIC_RUBRIC, JudgeSettings, OpenAIJudge, TwoJudges
from rewards.toy import NoisyToyJudge, toy_answer_reward
from rewards.types import RewardFn
from wavalign.config import ConfigError, RewardConfig, http_url_problem

URL_ENV = "WAVALIGN_REWARD_API_BASE"
# A judge call ends within this share of reward.timeout_s, so a chunk's scoring (decoding, the
# other functions running beside it) returns before the pool's deadline even with a hanging judge.
CALL_SHARE = 0.9


def judge_settings(cfg: RewardConfig, rubric: str) -> JudgeSettings:
    j = cfg.judge
    url = j.url or os.environ.get(URL_ENV)
    if not url:
        raise ConfigError("reward.judge.url", f"not set, and ${URL_ENV} is empty")
    if problem := http_url_problem(url):  # the config's URL is checked already; the variable's is not
        raise ConfigError("reward.judge.url", f"${URL_ENV}: {problem}")
    return JudgeSettings(
        url=url,
        model=j.model,
        rubric=rubric,
        api_key_env=j.api_key_env,
        timeout_s=j.timeout_s,
        request_timeout_s=j.request_timeout_s,
        call_timeout_s=CALL_SHARE * cfg.timeout_s,
        max_attempts=j.max_attempts,
        backoff_s=j.backoff_s,
        max_backoff_s=j.max_backoff_s,
        max_concurrency=j.max_concurrency,
        default_score=cfg.default_score,
        scale_min=cfg.scale_min,
        scale_max=cfg.scale_max,
        out_of_range=j.out_of_range,
        send_audio=j.send_audio,
        wav_header_rate=j.wav_header_rate,
        max_tokens=j.max_tokens,
        extra_body=dict(j.extra_body),
    )


def build_judge(cfg: RewardConfig) -> OpenAIJudge | TwoJudges:
    if cfg.judge.mode == "holistic":
        return OpenAIJudge(judge_settings(cfg, HOLISTIC_RUBRIC), name="judge")
    return TwoJudges(
        OpenAIJudge(judge_settings(cfg, SEMANTIC_RUBRIC), name="semantic"),
        OpenAIJudge(judge_settings(cfg, ACOUSTIC_RUBRIC), name="acoustic"),
        weights=(cfg.judge.semantic_weight, cfg.judge.acoustic_weight),
    )


def build_reward_functions(cfg: RewardConfig, seed: int = 0) -> dict[str, RewardFn]:
    """`seed` (the run's) seeds the toy answer's judge noise when there is any."""
    functions: dict[str, RewardFn] = {}
    for spec in cfg.functions:
        if spec.name == "toy_answer" and (cfg.toy_noise_std > 0 or cfg.toy_flip_prob > 0):
            functions[spec.name] = NoisyToyJudge(
                cfg.toy_noise_std, cfg.toy_flip_prob, seed, cfg.scale_min, cfg.scale_max
            )
        elif spec.name == "toy_answer":
            functions[spec.name] = toy_answer_reward
        elif spec.name == "judge":
            functions[spec.name] = build_judge(cfg)
        else:
            from rewards.reward_model import HFRewardModel

            functions[spec.name] = HFRewardModel(cfg.reward_model_path, scale=(cfg.scale_min, cfg.scale_max))
    return functions
