"""Tiny random-weight models of the architecture families spoken-dialogue LMs are built on, with a
given tokenizer (the toy one, so the toy data's ids fit): what the pipeline is checked on beside its
own tiny Qwen2. Built locally in seconds, nothing downloaded.

Which real models each family stands for (README: "Your own model"):
- `qwen2` (untied head): VITA-Audio (a Qwen2.5-7B backbone) and other Qwen2.5-based speech LMs;
- `llama`: Llama-based speech LMs (LLaMA-Omni: Llama-3.1-8B-Instruct);
- `qwen3`: Qwen3-based LMs (q/k norms, no attention bias);
- `glm`: GLM-4-9B's architecture in transformers' native form (`GlmForCausalLM`, as
  glm-4-9b-chat-hf: partial rotary, qkv bias, fused gate-up MLP), the backbone of GLM-4-Voice (whose
  own checkpoint ships ChatGLM remote code). (GLM-4-0414's `Glm4ForCausalLM` loads in both too; it
  is left out of the suite to keep it within its time.)
- `mtp_qwen2`: a checkpoint that ships its own modeling code (config `auto_map`, loaded only with
  model.trust_remote_code) and holds modules vLLM's model lacks: a Qwen2 with VITA-Audio-style
  multi-token-prediction heads (wavalign/toy/remote_code/), run with the settings of
  REMOTE_CODE_SETTINGS (vLLM serves it as its Qwen2, from a view without the heads).
Each uses head_dim 64 (vLLM's CPU attention needs it) and grouped-query attention (fewer key/value
heads than query heads), so the learner-to-vLLM name mapping meets split q/k/v weights that vLLM
fuses, and an untied output head.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

REMOTE_CODE = Path(__file__).parent / "remote_code"

HEAD_DIM = 64
# model_type -> the settings that make it that family's distinctive variant
FAMILIES: dict[str, dict[str, Any]] = {
    "qwen2": {"model_type": "qwen2"},
    "llama": {"model_type": "llama", "attention_bias": False},
    "qwen3": {"model_type": "qwen3"},
    "glm": {"model_type": "glm"},
    "mtp_qwen2": {"model_type": "qwen2"},  # built as its own code's class (below)
}
# model.* settings a family needs beyond the path
REMOTE_CODE_SETTINGS: dict[str, dict[str, Any]] = {
    "mtp_qwen2": {"trust_remote_code": True, "extra_modules": ["mtp_heads."], "vllm_architecture": "Qwen2ForCausalLM"},
}


def save_family_model(
    family: str, tokenizer_dir: str | Path, out_dir: str | Path, hidden: int = 128, layers: int = 2, seed: int = 0
) -> Path:
    """A random model of `family` (hidden size `hidden`, heads of 64, half as many key/value heads,
    untied head) with the tokenizer of tokenizer_dir, saved to out_dir; returns out_dir."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if family not in FAMILIES:
        raise ValueError(f"family {family!r}: choose from {', '.join(FAMILIES)}")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    heads = hidden // HEAD_DIM
    settings = dict(FAMILIES[family])
    config = AutoConfig.for_model(
        settings.pop("model_type"),
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=HEAD_DIM,
        max_position_embeddings=tokenizer.model_max_length,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        **settings,
    )
    torch.manual_seed(seed)
    if family in REMOTE_CODE_SETTINGS:
        model = _with_own_code(config)
    else:
        model = AutoModelForCausalLM.from_config(config).float()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if family in REMOTE_CODE_SETTINGS:  # the code beside the weights, as such checkpoints ship it
        for code in ("configuration_mtp_qwen2.py", "modeling_mtp_qwen2.py"):
            shutil.copy2(REMOTE_CODE / code, Path(out_dir) / code)
    return Path(out_dir)


def _with_own_code(config):
    """The MTP model of `config`'s settings, its config naming its code (auto_map)."""
    from wavalign.toy.remote_code.configuration_mtp_qwen2 import MtpQwen2Config
    from wavalign.toy.remote_code.modeling_mtp_qwen2 import MtpQwen2ForCausalLM

    own = MtpQwen2Config(
        **{k: v for k, v in config.to_dict().items() if k not in ("model_type", "transformers_version")}
    )
    own.auto_map = {
        "AutoConfig": "configuration_mtp_qwen2.MtpQwen2Config",
        "AutoModelForCausalLM": "modeling_mtp_qwen2.MtpQwen2ForCausalLM",
    }
    own.architectures = ["MtpQwen2ForCausalLM"]
    return MtpQwen2ForCausalLM(own).float()
