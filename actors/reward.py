"""RewardWorker: scores rollouts with the configured reward functions.

It turns each response into what a reward function sees (rewards.types.ScoredResponse): the text
channel decoded with special tokens stripped, and the speech channel decoded to audio when a speech
decoder is configured; then runs every function (concurrently) and returns each function's column
plus the weighted total. A plain class; the driver makes it a Ray worker at the call site.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from rewards.registry import build_reward_functions, speech_decoder_factory
from rewards.scores import checked_scores
from rewards.types import Audio, ScoredResponse
from wavalign.config import PipelineConfig
from wavalign.failpoints import failpoint
from wavalign.interleave import response_channels, text_string
from wavalign.messages import RewardRequest, RewardResult
from wavalign.model_files import load_tokenizer_and_layout
from wavalign.node_inputs import local_model_dir
from wavalign.worker_log import log_worker_output


class RewardWorker:
    def __init__(self, model_path: str, cfg: PipelineConfig, tokenizer_class: str | None = None) -> None:
        """model_path: a folder this node sees, or a URI (wavalign/node_inputs.py), as the reward model's.
        tokenizer_class: the class of the driver's tokenizer of that policy (model_files.tokenizer_class_of)."""
        log_worker_output()  # a run's worker: its output into <run>/logs/ too
        self.tokenizer, self.layout = load_tokenizer_and_layout(
            local_model_dir(model_path), cfg.model.layout, cfg.model.trust_remote_code, tokenizer_class
        )
        if cfg.reward.reward_model_path:
            local = local_model_dir(cfg.reward.reward_model_path, "reward.reward_model_path")
            cfg = cfg.model_copy(update={"reward": cfg.reward.model_copy(update={"reward_model_path": str(local)})})
        self.functions = build_reward_functions(cfg.reward, cfg.run.seed)
        self.weights = {spec.name: spec.weight for spec in cfg.reward.functions}
        self.decoder = speech_decoder_factory(cfg.reward)()
        self.reward_cfg = cfg.reward
        self.invalid_scores = {name: 0 for name in self.functions}  # replaced by the default score, per function
        self.decoder_failures = 0  # responses whose speech the decoder could not decode

    def ready(self) -> dict[str, int]:
        return {"pid": os.getpid()}

    def view(self, request: RewardRequest) -> ScoredResponse:
        text_ids, codes, _ = response_channels(request.response_token_ids, self.layout)
        audio, speech_error = None, None
        if self.decoder is not None and codes:
            try:
                decoded = self.decoder.decode(codes)
            except Exception as err:  # this response's codes, not the run: its audio is unusable, counted
                speech_error = f"{type(err).__name__}: {err}"
                self._decoder_failed(request, speech_error)
            else:
                audio = checked_audio(decoded)  # a decoder returning the wrong thing is a bug: an error
        return ScoredResponse(
            question=request.question_text,
            text=text_string(text_ids, self.tokenizer),
            audio=audio,
            reference=request.reference_text,
            extra=request.extra,
            speech_error=speech_error,
        )

    def _decoder_failed(self, request: RewardRequest, why: str) -> None:
        self.decoder_failures += 1
        if self.decoder_failures == 1:  # the first of this worker into its log; then counted only
            print(
                f"reward.speech_decoder failed on prompt {request.prompt_id} sample {request.sample_index} "
                f"({why}); such responses' audio is unusable: counted in judge_speech_decoder_failures",
                flush=True,
            )

    def score(self, requests: Sequence[RewardRequest]) -> list[RewardResult]:
        failpoint("reward.score")
        responses = [self.view(r) for r in requests]
        with ThreadPoolExecutor(max_workers=len(self.functions)) as pool:
            raw = dict(zip(self.functions, pool.map(lambda fn: fn(responses), self.functions.values())))
        spoil = failpoint("reward.scores")  # fault tests: every other score NaN, as a buggy function's
        columns = {name: self._checked(name, column, len(requests), spoil) for name, column in raw.items()}
        results = []
        for i, request in enumerate(requests):
            scores = {name: column[i] for name, column in columns.items()}
            total = sum(self.weights[name] * score for name, score in scores.items())
            results.append(RewardResult(request.prompt_id, request.sample_index, scores, total))
        return results

    def _checked(self, name: str, column, n: int, spoil: bool) -> list[float]:
        """One function's scores, each unusable one (non-finite, off the scale, not a number)
        replaced by reward.default_score and counted: one bad score must not reach λ or the
        advantages."""
        if spoil:
            column = [math.nan if i % 2 else score for i, score in enumerate(column)]
        r = self.reward_cfg
        checked, replaced = checked_scores(name, column, n, r.scale_min, r.scale_max, r.default_score)
        self.invalid_scores[name] += replaced
        return checked

    def counters(self) -> dict[str, int]:
        """Failure counters of the judges (requests, retries, failures, ...) and every function's
        replaced scores (`<name>/invalid_scores`, once any), by function."""
        failpoint("reward.counters")
        out = {f"{name}/invalid_scores": n for name, n in self.invalid_scores.items() if n}
        if self.decoder_failures:
            out["speech_decoder/failures"] = self.decoder_failures
        for name, fn in self.functions.items():
            if hasattr(fn, "counters"):
                out.update({f"{name}/{key}": value for key, value in fn.counters().items()})
        return out


def checked_audio(audio) -> Audio:
    """A speech decoder's answer, checked before any reward function reads it: a plug-in that
    returns something else is a one-line error naming what it returned."""
    rate = getattr(audio, "sample_rate", None)
    if not isinstance(audio, Audio) or not isinstance(rate, int) or rate <= 0:
        raise TypeError(
            f"reward.speech_decoder: decode() returned {type(audio).__name__} (sample_rate {rate!r}), "
            "not rewards.types.Audio with a positive integer sample_rate"
        )
    return audio
