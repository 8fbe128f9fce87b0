"""A random Qwen2 of another size with the toy tokenizer: for benchmarks and tests where the tiny
model's fixed per-call costs would hide what is measured."""

from __future__ import annotations

from pathlib import Path


def resized_model(model_dir: str | Path, hidden: int, layers: int, out_dir: str | Path) -> str:
    """Save a random Qwen2 (hidden size `hidden`, head_dim 64, MLP 4x, `layers` layers) with the
    toy model's vocabulary and tokenizer into out_dir; returns out_dir."""
    from transformers import AutoConfig, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    settings = AutoConfig.from_pretrained(model_dir).to_dict()
    settings.pop("layer_types", None)  # derived from the layer count
    heads = hidden // 64
    settings.update(
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
    )
    Qwen2ForCausalLM(Qwen2Config(**settings)).save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out_dir)
    return str(out_dir)
