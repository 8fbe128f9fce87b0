"""Building the configured reward functions and speech decoder: built-ins by name, plug-ins by import path."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from rewards.judge import ACOUSTIC_RUBRIC, HOLISTIC_RUBRIC, SEMANTIC_RUBRIC, JudgeSettings, OpenAIJudge, TwoJudges
from rewards.speech import SpeechDecoder
from rewards.toy import NoisyToyJudge, toy_answer_reward
from rewards.types import RewardFn
from wavalign.config import ConfigError, RewardConfig, http_url_problem
from wavalign.plugins import class_factory, decoder_factory, reward_factory

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


def _toy_answer(cfg: RewardConfig, seed: int) -> RewardFn:
    if cfg.toy_noise_std > 0 or cfg.toy_flip_prob > 0:
        return NoisyToyJudge(cfg.toy_noise_std, cfg.toy_flip_prob, seed, cfg.scale_min, cfg.scale_max)
    return toy_answer_reward


def _reward_model(cfg: RewardConfig, seed: int) -> RewardFn:
    from rewards.reward_model import HFRewardModel  # torch + transformers: only when listed

    return HFRewardModel(cfg.reward_model_path, scale=(cfg.scale_min, cfg.scale_max))


def _asr_consistency(cfg: RewardConfig, seed: int) -> RewardFn:
    from rewards.asr import AsrConsistency  # jiwer, and pocketsphinx for the default backend: only when listed

    return AsrConsistency(asr_backend_factory(cfg)(), cfg.scale_min, cfg.scale_max, cfg.asr.worst_wer)


# The built-in reward functions by name (wavalign/config.py: BUILTIN_REWARD_FUNCTIONS), each built
# from the reward section and the run's seed; every other function is a plug-in by import path.
BUILTIN_FUNCTIONS: dict[str, Callable[[RewardConfig, int], RewardFn]] = {
    "toy_answer": _toy_answer,
    "judge": lambda cfg, seed: build_judge(cfg),
    "reward_model": _reward_model,
    "asr_consistency": _asr_consistency,
}
# The built-in speech decoders by name: the same loader as a plug-in's ("none": no audio).
BUILTIN_DECODERS = {"toy": "rewards.speech:ToySpeechDecoder", "none": None}
# The built-in ASR backends of asr_consistency by name: the same loader as a plug-in's.
BUILTIN_ASR_BACKENDS = {"pocketsphinx": "rewards.asr:PocketSphinxRecognizer"}


def reward_function_factories(cfg: RewardConfig, seed: int = 0) -> dict[str, Callable[[], RewardFn]]:
    """Each configured function's builder, by name; a plug-in is imported and its signature checked
    here (PluginError naming reward.functions[i].path), built only when its builder is called."""
    factories = {}
    for i, spec in enumerate(cfg.functions):
        if spec.path is None:
            factories[spec.name] = functools.partial(BUILTIN_FUNCTIONS[spec.name], cfg, seed)
        else:
            factories[spec.name] = reward_factory(spec.path, spec.kwargs, f"reward.functions[{i}].path")
    return factories


def build_reward_functions(cfg: RewardConfig, seed: int = 0) -> dict[str, RewardFn]:
    """`seed` (the run's) seeds the toy answer's judge noise when there is any."""
    return {name: build() for name, build in reward_function_factories(cfg, seed).items()}


def speech_decoder_factory(cfg: RewardConfig) -> Callable[[], SpeechDecoder | None]:
    """The configured speech decoder's builder (a plug-in is imported and checked here)."""
    spec = cfg.speech_decoder
    path = BUILTIN_DECODERS.get(spec.path, spec.path)
    if path is None:
        return lambda: None
    return decoder_factory(path, spec.kwargs, "reward.speech_decoder.path")


def asr_backend_factory(cfg: RewardConfig) -> Callable[[], object]:
    """The asr_consistency backend's builder (a plug-in is imported and checked here)."""
    path = BUILTIN_ASR_BACKENDS.get(cfg.asr.backend, cfg.asr.backend)
    return class_factory(path, cfg.asr.kwargs, "reward.asr.backend", "transcribe", "audios", "an ASR backend")
