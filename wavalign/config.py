"""The one configuration tree of a wavalign-ray run.

`pipeline.yaml` mirrors this tree key for key. Every section forbids unknown keys, so a typo is an
error that names the key path instead of a silently ignored setting. Defaults are the WavAlign
method's (shared method.md §10); `pipeline.yaml` overrides the few that only make sense for the
project's tiny model (lengths, steps, learning rate) and says why.

Pure module: imports pydantic and the standard library only.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# The longest deadline any key takes: a week. Longer is a typo, and far larger values overflow the
# timeouts of sockets, threads and Ray.
MAX_TIMEOUT_S = 7 * 24 * 3600.0


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are re-validated, and
    values are taken as they are typed (strict: `true` is not 1, "5" is not 5; an integer is a
    valid float) and finite (no inf or nan anywhere)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


class RuntimeEnvConfig(Section):
    """What the run's workers need from outside the project (the plug-ins' own code and packages),
    shipped by Ray to every node they run on: the job's runtime_env, merged with the one the job was
    submitted with (a field set in both is an error), so `ray job submit` needs nothing installed by
    hand. Local paths are relative to the driver's working directory."""

    py_modules: list[str] = Field(
        default_factory=list, description="package folders, .whl/.zip files or remote URIs, importable in the workers"
    )
    working_dir: str | None = Field(None, description="a folder (or URI) the workers start in, importable")
    pip: list[str] = Field(default_factory=list, description="pip requirements installed for the workers")
    env_vars: dict[str, str] = Field(default_factory=dict, description="environment variables of the workers")

    def shipped_files(self) -> list[tuple[str, str]]:
        """(key, entry) of each local file or folder it ships (py_modules[i], working_dir); URIs
        left out: Ray fetches those itself."""
        entries = [(f"py_modules[{i}]", entry) for i, entry in enumerate(self.py_modules)]
        entries += [("working_dir", self.working_dir)] if self.working_dir else []
        return [(key, entry) for key, entry in entries if "://" not in entry]

    def ray_runtime_env(self, base: str) -> dict[str, Any]:
        """Ray's runtime_env dict (only the keys set), local paths made absolute from `base` (the
        driver's working directory: Ray uploads them from there)."""
        files = dict(self.shipped_files())

        def local(key: str, entry: str) -> str:
            return os.path.normpath(os.path.join(base, entry)) if key in files else entry

        fields = {
            "py_modules": [local(f"py_modules[{i}]", entry) for i, entry in enumerate(self.py_modules)],
            "working_dir": local("working_dir", self.working_dir) if self.working_dir else None,
            "pip": self.pip,
            "env_vars": self.env_vars,
        }
        return {key: value for key, value in fields.items() if value}


class RunConfig(Section):
    name: str = Field(
        "wavalign", min_length=1, max_length=100, description="run name; the run dir is output_dir/name-<time>"
    )
    output_dir: str = Field("runs", description="where run directories are created")
    seed: int = Field(42, description="global seed (method §10: 42)")
    steps: int = Field(2000, ge=1, description="optimizer steps (method: max_steps 2000)")
    worker_logs_to_console: bool = Field(
        False, description="workers' output on the console too (it always goes to <run>/logs/ and Ray's logs)"
    )
    runtime_env: RuntimeEnvConfig = Field(
        default_factory=RuntimeEnvConfig, description="plug-ins' code and packages, shipped to every worker"
    )

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        """The run directory is output_dir/<name>-<time>: a name must not lead anywhere else."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError(
                f"{value!r} is not a plain name (letters, digits, '.', '_', '-'; not starting with '.' or '-'): "
                "the run directory goes inside run.output_dir"
            )
        return value


class LayoutConfig(Section):
    """How text and speech tokens are told apart in a tokenizer (method §1.1–1.2).

    `preset` fills every field left unset; explicit fields override the preset. With
    preset `custom` every field must be given.
    """

    preset: Literal["tiny", "glm4voice", "vita-audio", "custom"] = "tiny"
    speech_token_format: str | None = Field(
        None, description="name of speech token i, with '{i}' for the index, e.g. '<|audio_{i}|>'"
    )
    num_speech_tokens: int | None = Field(None, ge=1, description="codebook size: ids for i = 0..n-1")
    begin_audio_token: str | None = None
    end_audio_token: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None
    interleave_ratio: list[int] | None = Field(
        None, description="(T1, A1, T2, A2, ...): text tokens, then an audio block of A tokens incl. BOA/EOA"
    )
    include_audio_boundaries: bool = Field(True, description="BOA/EOA count as speech (method default)")

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        """Unset fields take the preset's values, so the resolved config shows the ids' names."""
        if isinstance(data, dict) and data.get("preset", "tiny") in LAYOUT_PRESETS:
            preset = LAYOUT_PRESETS[data.get("preset", "tiny")]
            data = {**data, **{k: v for k, v in preset.items() if data.get(k) is None}}
        return data

    @field_validator("speech_token_format")
    @classmethod
    def _has_index(cls, value: str | None) -> str | None:
        if value is not None and "{i}" not in value:
            raise ValueError("must contain '{i}' where the token index goes")
        return value

    @field_validator("interleave_ratio")
    @classmethod
    def _valid_ratio(cls, value: list[int] | None) -> list[int] | None:
        if value is not None:
            check_interleave_ratio(value)
        return value

    @model_validator(mode="after")
    def _check(self) -> LayoutConfig:
        if self.preset == "custom":
            missing = [name for name in LAYOUT_FIELDS if getattr(self, name) is None]
            if missing:
                raise ConfigError(
                    missing[0], f"preset 'custom' needs every layout field; missing: {', '.join(missing)}"
                )
        return self


SPEECH_TOKEN_FORMAT = "<|audio_{i}|>"
_CODEC_TOKENS = dict(
    speech_token_format=SPEECH_TOKEN_FORMAT,
    begin_audio_token="<|begin_of_audio|>",
    end_audio_token="<|end_of_audio|>",
    eos_token="<|im_end|>",
    pad_token="<|endoftext|>",
)
# Presets (method §1.1, design notes). An audio block size A counts BOA + speech tokens + EOA.
LAYOUT_PRESETS: dict[str, dict[str, Any]] = {
    # GLM-4-Voice: 16,384 codes at 12.5 Hz, alternating 13 text tokens with 26 speech tokens.
    "glm4voice": dict(_CODEC_TOKENS, num_speech_tokens=16384, interleave_ratio=[13, 28]),
    # VITA-Audio (Boost / Plus-Vanilla): 1 text + a 10-block, then 4 text + 10-blocks repeating.
    "vita-audio": dict(_CODEC_TOKENS, num_speech_tokens=16384, interleave_ratio=[1, 10, 4, 10]),
    # The project's tiny model: a 256-code toy codec, short chunks so that toy answers interleave.
    "tiny": dict(_CODEC_TOKENS, num_speech_tokens=256, interleave_ratio=[2, 8, 3, 8]),
}

LAYOUT_FIELDS = (
    "speech_token_format",
    "num_speech_tokens",
    "begin_audio_token",
    "end_audio_token",
    "eos_token",
    "pad_token",
    "interleave_ratio",
)


def check_interleave_ratio(ratio: list[int]) -> None:
    """A ratio is non-empty (T, A) pairs; an audio block holds BOA + >= 1 speech token + EOA."""
    if len(ratio) < 2 or len(ratio) % 2:
        raise ValueError(f"expected (text, audio) pairs, got {ratio}")
    if any(t < 1 for t in ratio[0::2]):
        raise ValueError(f"text chunk sizes must be >= 1, got {ratio}")
    if any(a < 3 for a in ratio[1::2]):
        raise ValueError(f"audio block sizes must be >= 3 (BOA + speech + EOA), got {ratio}")


class ModelConfig(Section):
    path: str | None = Field(None, description="HF directory of the policy; null = the project's tiny model")
    layout: LayoutConfig = LayoutConfig()
    dtype: Literal["float32", "bfloat16"] = Field("bfloat16", description="method: bf16; CPU runs use float32")
    max_model_len: int = Field(4096, ge=16, description="tokens: prompt + response")
    trust_remote_code: bool = Field(
        False,
        description="run the modeling and tokenizer code the checkpoint ships (its config's auto_map), in the learner, "
        "the rollout engines and the reward workers: checkpoints whose architecture transformers lacks (GLM-4-Voice's "
        "ChatGLM format, a model with extra heads). Only for checkpoints whose code you trust",
    )
    extra_modules: list[str] = Field(
        [],
        description="parameter-name prefixes of modules the checkpoint has and vLLM's model of its architecture lacks "
        "(VITA-Audio-style multi-token-prediction heads, e.g. 'mtp_heads.'): the learner keeps them frozen (the "
        "objective does not train them) and exports them unchanged, the weight sync skips them, and the rollout "
        "engines load a view of the checkpoint without them",
    )
    vllm_architecture: str | None = Field(
        None,
        description="the vLLM architecture to run the checkpoint as (vLLM's hf_overrides), when vLLM does not know its "
        "own class: e.g. Qwen2ForCausalLM for a Qwen2 with extra heads; null = the checkpoint's",
    )

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        for prefix in self.extra_modules:
            if not prefix or prefix != prefix.strip() or not prefix.replace(".", "").replace("_", "").isalnum():
                raise ConfigError("extra_modules", f"{prefix!r} is not a parameter-name prefix (e.g. 'mtp_heads.')")
        if self.vllm_architecture is not None and not self.vllm_architecture.isidentifier():
            raise ConfigError("vllm_architecture", f"{self.vllm_architecture!r} is not a class name")
        return self


class WarmStartConfig(Section):
    """Supervised warm start of the tiny model with label noise, so that it masters the format and the
    codec (speech always matches the text it is taught) but is right only part of the time, with a
    spread that gives RL groups reward variance. Each train question q gets a fixed wrong answer and
    a seeded rate p_q in [correct_rate_min, correct_rate_max]; each time q is drawn, its reference
    states the right result with probability p_q and the wrong one otherwise."""

    questions: Literal["train", "all"] = Field(
        "train",
        description="train: the train split only; all: every question, the eval split's too (the warm start as the "
        "model's pretraining: post-training still sees only the train split)",
    )
    wrong_answer: Literal["nearby", "next", "left_operand", "hedge"] = Field(
        "nearby",
        description="each question's wrong result: nearby (a seeded one 1-3 away), next (the result + 1), "
        'left_operand (the question\'s first number: a copying slip), hedge (no result: "... is what")',
    )
    correct_rate_min: float = Field(0.2, ge=0, le=1, description="lowest per-question share of right references")
    correct_rate_max: float = Field(0.8, ge=0, le=1, description="highest per-question share of right references")
    max_steps: int = Field(1500, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(3e-3, gt=0)
    min_steps: int = Field(300, ge=0, description="train at least this long, so answer rates settle")
    max_word_error_rate: float = Field(0.03, ge=0, le=1, description="then stop once speech decodes this well...")
    min_well_formed: float = Field(0.95, ge=0, le=1, description="...and this share of answers is well-formed")
    check_every: int = Field(50, ge=1, description="steps between the stop checks (greedy, all train prompts)")

    @model_validator(mode="after")
    def _check(self) -> WarmStartConfig:
        if self.correct_rate_min > self.correct_rate_max:
            raise ConfigError(
                "correct_rate_min", f"{self.correct_rate_min} > correct_rate_max ({self.correct_rate_max})"
            )
        if self.min_steps > self.max_steps:
            raise ConfigError("min_steps", f"{self.min_steps} > max_steps ({self.max_steps})")
        return self


class ToyConfig(Section):
    """The project's own spoken-arithmetic task and tiny model (no downloads)."""

    assets_dir: str = Field(".assets/toy", description="cache of the built model and data")
    seed: int = 1234
    max_operand: int = Field(9, ge=1, le=9, description="questions use operands 0..max_operand")
    eval_fraction: float = Field(0.2, gt=0, lt=1, description="share of questions held out for evaluation")
    min_word_tokens: int = Field(2, ge=1, description="shortest pronunciation, in speech tokens")
    max_word_tokens: int = Field(4, ge=1, description="longest pronunciation, in speech tokens")
    hidden_size: int = Field(128, ge=64)
    num_layers: int = Field(4, ge=1)
    warm_start: WarmStartConfig = WarmStartConfig()
    noisy_sft_references: bool = Field(
        False,
        description="each train row's SFT reference is one draw of the warm start's label noise (imperfect SFT data)",
    )

    @model_validator(mode="after")
    def _check(self) -> ToyConfig:
        if self.min_word_tokens > self.max_word_tokens:
            raise ConfigError("min_word_tokens", f"{self.min_word_tokens} > max_word_tokens ({self.max_word_tokens})")
        if self.hidden_size % 64:
            raise ConfigError("hidden_size", "must be a multiple of 64 (head_dim 64; vLLM's CPU attention needs it)")
        return self


class DataConfig(Section):
    train_files: list[str] = Field(default_factory=list, description="JSONL/Parquet; empty = toy train split")
    eval_files: list[str] = Field(default_factory=list, description="JSONL/Parquet; empty = toy eval split")
    max_prompt_tokens: int = Field(2048, ge=1, description="longer prompts are invalid rows")
    skip_invalid_rows: bool = Field(False, description="skip (and count) bad rows instead of failing")
    task_types: list[str] = Field(
        default_factory=lambda: ["s2s"], min_length=1, description="rows of other types are dropped (and counted)"
    )


class PlacementConfig(Section):
    """Where a role's workers run, besides the CPUs and GPUs each takes: custom Ray resources (a node
    offers them when started with `ray start --resources '{"rollout_node": 4}'`) and an accelerator
    type. Each rollout or reward worker reserves its own placement group (so a pool grows and shrinks
    one worker at a time); the learner ranks reserve one group together, packed."""

    resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources each worker needs, e.g. {rollout_node: 1}"
    )
    accelerator_type: str | None = Field(None, description="Ray accelerator type each worker needs, e.g. H100")

    @field_validator("resources")
    @classmethod
    def _custom_and_positive(cls, resources: dict[str, float]) -> dict[str, float]:
        for name, amount in resources.items():
            if name in ("CPU", "GPU", "memory", "object_store_memory") or name.startswith("accelerator_type:"):
                raise ValueError(f"{name}: set through cpus_per_worker, gpus_per_worker or accelerator_type")
            if amount <= 0:
                raise ValueError(f"{name}: {amount} is not > 0")
        return resources

    def bundle(self, cpus: float, gpus: float) -> dict[str, float]:
        """One worker's placement-group bundle (resources of amount 0 left out, as Ray requires).

        >>> PlacementConfig(resources={"rollout_node": 1}, accelerator_type="H100").bundle(1, 0)
        {'CPU': 1, 'rollout_node': 1.0, 'accelerator_type:H100': 0.001}
        """
        accelerator = {f"accelerator_type:{self.accelerator_type}": 0.001} if self.accelerator_type else {}
        bundle = {"CPU": cpus, "GPU": gpus, **self.resources, **accelerator}
        return {name: amount for name, amount in bundle.items() if amount > 0}


class RolloutConfig(Section):
    num_workers: int = Field(1, ge=1, description="vLLM rollout workers; scalable while a run goes")
    cpus_per_worker: float = Field(1, gt=0)
    gpus_per_worker: float = Field(0, ge=0)
    placement: PlacementConfig = PlacementConfig()
    group_size: int = Field(4, ge=2, description="G responses per prompt (method: 4)")
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(0.9, gt=0, le=1, description="method §15 item 4: stated explicitly")
    top_k: int = Field(0, ge=0, description="0 = off")
    max_new_tokens: int = Field(1024, ge=1)
    kv_cache_gib: float = Field(1, gt=0, description="vLLM CPU KV cache (VLLM_CPU_KVCACHE_SPACE)")
    timeout_s: float = Field(
        600, gt=0, le=MAX_TIMEOUT_S, description="a generate call that takes longer is an error naming the worker"
    )
    start_timeout_s: float = Field(
        600, gt=0, le=MAX_TIMEOUT_S, description="a worker whose engine is not up by then is an error"
    )
    update_timeout_s: float = Field(
        120, gt=0, le=MAX_TIMEOUT_S, description="a weight update that takes longer is an error"
    )
    weight_bucket_mb: float = Field(64, gt=0, description="weights stream to workers in buckets of this size")
    weight_staging_dir: str = Field(
        "/dev/shm",
        description="shared memory: the learner's weight region, read in place by the workers on its node "
        "(it needs the policy's size free; else the object store carries the weights), and staged chunks",
    )
    groups_per_call: int = Field(
        0, ge=0, description="prompt groups per generate call; 0 = spread evenly, one call per worker"
    )
    max_redispatch: int = Field(2, ge=0, description="times a lost chunk of groups is re-sent after worker deaths")
    reproducible: bool = Field(
        True, description="seeded steps sample identically (exact resume); false = vLLM's multiprocess engine core"
    )
    weight_transfer: Literal["auto", "object_store", "nccl", "ipc"] = Field(
        "auto", description="how new weights reach vLLM; auto = object_store (ipc when colocated)"
    )
    colocate: bool = Field(
        False, description="GPUs: rollout workers share the learner's GPUs; vLLM sleeps while it learns"
    )
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="GPUs: share of a rollout GPU that vLLM takes")

    @property
    def weight_transfer_backend(self) -> Literal["object_store", "nccl", "ipc"]:
        """`weight_transfer` with auto resolved: ipc when colocated, else the object store. vLLM's
        native NCCL transfer is opt-in until it has run on a GPU (issue 8)."""
        if self.weight_transfer != "auto":
            return self.weight_transfer
        return "ipc" if self.colocate else "object_store"

    @model_validator(mode="after")
    def _check(self) -> RolloutConfig:
        on_gpus = self.gpus_per_worker > 0
        if self.weight_transfer in ("nccl", "ipc") and not on_gpus:
            raise ConfigError(
                "weight_transfer",
                f"{self.weight_transfer} needs GPUs: set rollout.gpus_per_worker > 0 (on CPU: auto or object_store)",
            )
        if self.colocate and not on_gpus:
            raise ConfigError("colocate", "needs GPUs (vLLM's sleep mode): set rollout.gpus_per_worker > 0")
        if self.weight_transfer == "nccl" and self.colocate:
            raise ConfigError(
                "weight_transfer", "nccl cannot put two ranks on one GPU; colocated workers use ipc (or auto)"
            )
        if self.weight_transfer == "ipc" and not self.colocate:
            raise ConfigError(
                "weight_transfer", "ipc shares CUDA memory within one GPU: it needs rollout.colocate: true"
            )
        return self


class JudgeConfig(Section):
    """An OpenAI-compatible chat-completions judge (method §4)."""

    url: str | None = Field(None, description="full chat-completions URL; null = $WAVALIGN_REWARD_API_BASE")
    model: str = Field("gpt-4o", description="model name sent to the judge (method default)")
    api_key_env: str = Field("WAVALIGN_REWARD_API_KEY", description="environment variable holding the key")
    mode: Literal["holistic", "two_judges"] = Field("holistic", description="one judge, or semantic + acoustic")
    semantic_weight: float = Field(0.7, ge=0, le=1, description="two_judges: r = w_sem * semantic + w_ac * acoustic")
    acoustic_weight: float = Field(0.3, ge=0, le=1)
    timeout_s: float = Field(60, gt=0, le=MAX_TIMEOUT_S, description="each attempt, wall clock (method: 60)")
    request_timeout_s: float = Field(
        300, gt=0, le=MAX_TIMEOUT_S, description="each request with its retries; then the default score"
    )
    max_attempts: int = Field(5, ge=1, description="method: 5")
    backoff_s: float = Field(5, ge=0, le=MAX_TIMEOUT_S, description="wait before retry k: backoff_s * 2^(k-1)")
    max_backoff_s: float = Field(60, ge=0, le=MAX_TIMEOUT_S)
    max_concurrency: int = Field(8, ge=1, description="requests in flight per reward worker")
    out_of_range: Literal["default", "clamp"] = Field("default", description="a score outside the scale")
    send_audio: bool = Field(True, description="send the decoded speech as base64 WAV")
    wav_header_rate: int | None = Field(None, ge=1, description="null = the audio's true rate; 24000 = authors' bug")
    max_tokens: int = Field(512, ge=1, description="reply length limit")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="merged into each request body")

    @model_validator(mode="after")
    def _check(self) -> JudgeConfig:
        if self.url is not None and (problem := http_url_problem(self.url)):
            raise ConfigError("url", problem)
        if self.mode == "two_judges" and abs(self.semantic_weight + self.acoustic_weight - 1) > 1e-9:
            raise ConfigError("semantic_weight", "semantic_weight + acoustic_weight must be 1 (stays on the scale)")
        return self


# The reward functions and speech decoders the project ships (rewards/registry.py builds them); any
# other is a plug-in named by its import path.
BUILTIN_REWARD_FUNCTIONS = ("toy_answer", "judge", "reward_model", "asr_consistency")
BUILTIN_SPEECH_DECODERS = ("toy", "none")
_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def import_path_problem(path: str) -> str | None:
    """Why `path` is not 'package.module:attribute', or None."""
    if _IMPORT_PATH.fullmatch(path):
        return None
    return f"{path!r} is not an import path 'package.module:attribute'"


class RewardFunctionConfig(Section):
    """A built-in reward function (by name), or a plug-in: `path` names a callable with the reward
    signature (rewards/types.py: RewardFn; kwargs are passed with each call) or a class built once per
    reward worker with the kwargs, whose instances are such callables."""

    name: str = Field(description="the function's column (reward_<name>); a built-in's name when path is null")
    weight: float = Field(1.0, ge=0)
    path: str | None = Field(None, description="'package.module:attribute' of a plug-in; null = the built-in")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="a plug-in's keyword arguments")

    @model_validator(mode="after")
    def _check(self) -> RewardFunctionConfig:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", self.name):
            raise ConfigError("name", f"{self.name!r} is not a plain name (letters, digits, '_'): it names columns")
        if self.path is None and self.name not in BUILTIN_REWARD_FUNCTIONS:
            raise ConfigError(
                "path",
                f"{self.name!r} is not a built-in reward function ({', '.join(BUILTIN_REWARD_FUNCTIONS)}): "
                "give the import path of yours",
            )
        if self.path is not None and (problem := import_path_problem(self.path)):
            raise ConfigError("path", problem)
        if self.path is not None and self.name in BUILTIN_REWARD_FUNCTIONS:
            raise ConfigError("name", f"{self.name!r} is a built-in's name; give your function another")
        if self.path is None and self.kwargs:
            raise ConfigError("kwargs", f"the built-in {self.name!r} takes its settings from the reward section")
        return self


class SpeechDecoderConfig(Section):
    """Speech codes -> audio for the reward functions (the judge hears it): a built-in, or a plug-in
    class implementing rewards/speech.py: SpeechDecoder, built once per reward worker with kwargs."""

    path: str = Field("toy", description="toy | none | 'package.module:Class' of your decoder")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="the plug-in's constructor arguments")

    @model_validator(mode="before")
    @classmethod
    def _name_alone(cls, value: Any) -> Any:
        """`speech_decoder: toy` is short for `speech_decoder: {path: toy}`."""
        return {"path": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> SpeechDecoderConfig:
        if self.path not in BUILTIN_SPEECH_DECODERS and (problem := import_path_problem(self.path)):
            raise ConfigError("path", f"{problem}, nor a built-in ({', '.join(BUILTIN_SPEECH_DECODERS)})")
        if self.path in BUILTIN_SPEECH_DECODERS and self.kwargs:
            raise ConfigError("kwargs", f"the built-in decoder {self.path!r} takes none")
        return self


BUILTIN_ASR_BACKENDS = ("pocketsphinx",)


class AsrConfig(Section):
    """The asr_consistency reward: each response's speech, decoded by reward.speech_decoder, is
    transcribed and compared with the response's own text channel (word error rate), so a spoken
    answer that says something else than its text scores low."""

    backend: str = Field(
        "pocketsphinx",
        description="pocketsphinx (offline CPU recogniser, its English model inside the package) | "
        "'package.module:Class' with transcribe(self, audios) -> list[str] (e.g. a Whisper wrapper on a GPU)",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="the backend's constructor arguments")
    worst_wer: float = Field(
        1.0, gt=0, description="WER at or above which the score is scale_min; WER 0 scores scale_max, linear between"
    )

    @model_validator(mode="after")
    def _check(self) -> AsrConfig:
        if self.backend not in BUILTIN_ASR_BACKENDS and (problem := import_path_problem(self.backend)):
            raise ConfigError("backend", f"{problem}, nor a built-in ({', '.join(BUILTIN_ASR_BACKENDS)})")
        return self


class RewardConfig(Section):
    scale_min: float = Field(1.0, description="the judge's scale; λ's constants derive from it")
    scale_max: float = Field(5.0)
    default_score: float = Field(2.5, description="score of a failed judge call (method §4)")
    functions: list[RewardFunctionConfig] = Field(
        default_factory=lambda: [RewardFunctionConfig(name="judge")], description="weighted; weights sum to 1"
    )
    judge: JudgeConfig = JudgeConfig()
    reward_model_path: str | None = Field(None, description="local HF sequence-classification model directory")
    speech_decoder: SpeechDecoderConfig = Field(
        default_factory=SpeechDecoderConfig, description="speech codes -> audio for the reward functions"
    )
    asr: AsrConfig = AsrConfig()
    toy_noise_std: float = Field(0.0, ge=0, description="toy_answer as a noisy judge: Gaussian noise on its score")
    toy_flip_prob: float = Field(0.0, ge=0, le=1, description="... and the chance its right/wrong verdict is reversed")
    num_workers: int = Field(1, ge=1, description="reward workers")
    cpus_per_worker: float = Field(0.5, gt=0, description="mostly waiting on HTTP; little CPU")
    placement: PlacementConfig = PlacementConfig()
    timeout_s: float = Field(
        900, gt=0, le=MAX_TIMEOUT_S, description="a scoring call that takes longer is an error naming the worker"
    )

    @model_validator(mode="after")
    def _check(self) -> RewardConfig:
        if self.scale_max <= self.scale_min:
            raise ConfigError("scale_max", f"{self.scale_max} must be > scale_min ({self.scale_min})")
        if not self.scale_min <= self.default_score <= self.scale_max:
            raise ConfigError("default_score", f"{self.default_score} lies outside [scale_min, scale_max]")
        if not self.functions:
            raise ConfigError("functions", "at least one reward function is needed")
        names = [f.name for f in self.functions]
        if len(set(names)) != len(names):
            raise ConfigError("functions", f"each function at most once, got {names}")
        total = sum(f.weight for f in self.functions)
        if abs(total - 1) > 1e-9:
            raise ConfigError(
                "functions", f"weights sum to {total:g}; they must sum to 1 so the total stays on the scale"
            )
        if "reward_model" in names and not self.reward_model_path:
            raise ConfigError("reward_model_path", "required when 'reward_model' is among the functions")
        if "asr_consistency" in names and self.speech_decoder.path == "none":
            raise ConfigError("speech_decoder", "'asr_consistency' transcribes the decoded speech: it needs a decoder")
        return self


class AlgorithmConfig(Section):
    objective: Literal["wavalign", "dpo"] = Field("wavalign", description="RL + SFT mix (§7), or the DPO variant (§8)")
    rl_token_type: Literal["text", "speech", "all"] = "text"
    sft_token_type: Literal["all", "text", "speech"] = "all"
    adaptive_mixing: bool = True
    lambda_max: float = Field(0.8, gt=0, le=1)
    ema_alpha: float = Field(0.9, ge=0, lt=1)
    gate_slope: float = Field(5.0, gt=0)
    fixed_rl_weight: float = Field(0.7, ge=0, le=1, description="λ when adaptive_mixing is off")
    kl_beta_text: float = Field(0.0, ge=0, description="k3 KL weight on text tokens; > 0 builds a frozen reference")
    kl_beta_speech: float = Field(0.0, ge=0, description="the same on speech tokens (method: 0.001 each when on)")
    stale_correction: Literal["clipped_ratio", "none"] = Field(
        "clipped_ratio", description="rollouts from older weights: importance ratio vs the sampler's logprobs"
    )
    ratio_clip: float = Field(0.2, gt=0, lt=1, description="the ratio is kept within [1 - clip, 1 + clip]")
    dpo_beta: float = Field(0.2, gt=0, description="method §15.10: the script's 0.2")
    dpo_token_type: Literal["text", "speech", "all"] = Field("text", description="tokens whose log-probs DPO compares")
    dpo_sft_weight: float = Field(
        0.0,
        ge=0,
        description="an SFT anchor on the chosen side (sft_token_type tokens) added to DPO; method §15.9: off",
    )
    dpo_pairs: Literal["online", "offline"] = Field(
        "online",
        description="DPO pairs: each step's own groups (best vs worst response), or the data's rows "
        "(reference = chosen, rejected_token_ids = rejected; python -m learner.dpo_pairs --from-rollouts makes them)",
    )
    dpo_min_score_gap: float = Field(
        1.0, ge=0, description="online pairs: a group's best and worst reward differ by at least this"
    )
    dpo_chosen: Literal["best", "reference"] = Field(
        "best", description="online pairs: the chosen side is the group's best response, or the prompt's reference"
    )
    lambda_scope: Literal["global", "per_rank"] = Field(
        "global", description="λ from all of the step's groups, or each learner rank's own (the authors' code, §15.6)"
    )
    advantage_std: Literal["population", "unbiased"] = Field("population", description="method §15.8")

    @property
    def needs_reference(self) -> bool:
        """A frozen copy of the initial policy exists only when something uses it (method §3.4)."""
        return self.objective == "dpo" or self.kl_beta_text > 0 or self.kl_beta_speech > 0


class TrainConfig(Section):
    rollout_batch_size: int = Field(4, ge=1, description="responses per step = prompts per step x group_size")
    max_staleness: int = Field(
        0, ge=0, le=1, description="0 = on-policy; 1 = the next step's rollouts are sampled while the learner trains"
    )
    eval_every: int = Field(0, ge=0, description="steps between evaluations on the eval split; 0 = never")
    eval_repeats: int = Field(
        1, ge=1, description="each eval prompt is sampled group_size x eval_repeats times (a smaller standard error)"
    )
    checkpoint_every: int = Field(
        10, ge=0, description="steps between checkpoints (also at the end and on SIGTERM); 0 = only those"
    )
    keep_checkpoints: int = Field(3, ge=1, description="the newest this many checkpoints are kept")


class LearnerConfig(Section):
    num_workers: int = Field(1, ge=1, description="data-parallel learner workers")
    cpus_per_worker: float = Field(1, gt=0)
    gpus_per_worker: float = Field(0, ge=0)
    placement: PlacementConfig = PlacementConfig()
    zero_stage: int = Field(2, ge=0, le=3, description="method: ZeRO-2")
    precision: Literal["float32", "bfloat16"] = Field("bfloat16", description="method: bf16; CPU runs use float32")
    learning_rate: float = Field(1e-6, gt=0, description="method: 1e-6")
    adam_betas: tuple[float, float] = Field((0.9, 0.95), description="method: (0.9, 0.95); each in [0, 1)")
    adam_eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.2, gt=0, description="method: 1.2")
    warmup_steps: int = Field(20, ge=0, description="method script: 20")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="after warm-up (method §15.5)")
    micro_batch_rows: int = Field(8, ge=1, description="sequences per forward/backward; gradients accumulate")
    grad_norm_every: int = Field(10, ge=0, description="steps between per-modality gradient norms; 0 = never")
    timeout_s: float = Field(
        1800, gt=0, le=MAX_TIMEOUT_S, description="a learner call that takes longer is an error naming the rank"
    )
    torch_threads: int = Field(0, ge=0, description="CPU threads of each learner's torch; 0 = Ray's setting (its CPUs)")
    max_restarts: int = Field(
        2, ge=0, description="learner groups rebuilt from the last checkpoint after a rank dies or hangs, per job"
    )

    @field_validator("adam_betas", mode="before")
    @classmethod
    def _betas_from_a_list(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value  # YAML has lists, not tuples

    @field_validator("adam_betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= beta < 1 for beta in value):
            raise ValueError(f"each beta must lie in [0, 1), got {list(value)}")
        return value


class PipelineConfig(Section):
    run: RunConfig = RunConfig()
    model: ModelConfig = ModelConfig()
    toy: ToyConfig = ToyConfig()
    data: DataConfig = DataConfig()
    rollout: RolloutConfig = RolloutConfig()
    reward: RewardConfig = RewardConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    train: TrainConfig = TrainConfig()
    learner: LearnerConfig = LearnerConfig()

    @model_validator(mode="after")
    def _cross_field(self) -> PipelineConfig:
        group, batch = self.rollout.group_size, self.train.rollout_batch_size
        if batch % group:
            raise ConfigError("train.rollout_batch_size", f"{batch} is not divisible by rollout.group_size ({group})")
        prompts = batch // group
        if prompts % self.learner.num_workers:
            raise ConfigError(
                "learner.num_workers",
                f"{prompts} prompts per step cannot be split evenly over {self.learner.num_workers} learner workers",
            )
        need = self.data.max_prompt_tokens + self.rollout.max_new_tokens
        if need > self.model.max_model_len:
            raise ConfigError(
                "model.max_model_len",
                f"{self.model.max_model_len} < data.max_prompt_tokens + rollout.max_new_tokens ({need})",
            )
        if self.model.path is None and self.model.layout.preset != "tiny":
            raise ConfigError("model.layout.preset", "the tiny model (model.path: null) uses the 'tiny' layout")
        if self.model.path is not None and not self.data.train_files:
            raise ConfigError("data.train_files", "the toy data fits only the tiny model; give data for model.path")
        return self


class InvalidConfig(ValueError):
    """Every problem of a config tree, one line each, each naming its key path (and the value)."""

    def __init__(self, problems: list[str]) -> None:
        lines = problems[0] if len(problems) == 1 else "\n" + "\n".join(f"  {p}" for p in problems)
        super().__init__(f"invalid config: {lines}")
        self.problems = problems


class ConfigError(ValueError):
    """A config problem at one key path."""

    def __init__(self, key_path: str, reason: str) -> None:
        super().__init__(f"{key_path}: {reason}")
        self.key_path = key_path


_KEYED_MESSAGE = re.compile(r"^([A-Za-z_][\w.]*): (.*)$", re.DOTALL)


def validation_problems(err: ValidationError) -> list[str]:
    """One line per problem, each starting with the full dotted key path."""
    lines = []
    for problem in err.errors():
        path = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        keyed = _KEYED_MESSAGE.match(message) if problem["type"] == "value_error" else None
        if keyed:  # a ConfigError from a section validator: its key is relative to the section
            path = f"{path}.{keyed[1]}" if path else keyed[1]
            message = keyed[2]
        elif not isinstance(problem["input"], dict) and problem["type"] not in ("missing", "value_error"):
            message = f"{message} (got {_shown(problem['input'])})"
        lines.append(f"{path}: {message}" if path else message)
    return lines


def http_url_problem(url: str) -> str | None:
    """Why `url` is not an http(s)://host[:port]/path URL, or None: the one check of a judge URL,
    whether it comes from the config or from $WAVALIGN_REWARD_API_BASE."""
    parts = urllib.parse.urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        return f"{url!r} is not an http(s)://host[:port]/path URL"
    return None


def _shown(value: Any) -> str:
    """A value as the user typed it in YAML, cut short when long."""
    text = "true" if value is True else "false" if value is False else "null" if value is None else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def set_dotted(tree: dict[str, Any], key_path: str, value: Any) -> None:
    """Set tree[a][b][c] = value for key_path 'a.b.c', creating sections as needed."""
    *parents, leaf = key_path.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(key_path, f"'{part}' is a value, not a section")
        node = child
    node[leaf] = value


def load_config(tree: dict[str, Any]) -> PipelineConfig:
    """Validate a raw tree; raises InvalidConfig listing every problem with its key path."""
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as err:
        raise InvalidConfig(validation_problems(err)) from None
