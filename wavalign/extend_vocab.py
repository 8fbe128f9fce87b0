"""From a text LM to a speech LM's starting point: append a speech vocabulary to an HF model.

    python -m wavalign.extend_vocab --model TEXT_LM_DIR --out NEW_DIR [--speech-tokens 16384]
        [--token-format '<|audio_{i}|>'] [--begin-audio '<|begin_of_audio|>'] [--end-audio '<|end_of_audio|>']
        [--init mean|sampled] [--pad-to-multiple-of 64] [--trust-remote-code]

What GLM-4-Voice and VITA-Audio did to their text backbones: the begin/end-of-audio markers and N
speech tokens become special tokens of the tokenizer, the speech tokens last and contiguous (the
layout's rule, method §1.2: every id from `<|audio_0|>` up is speech); the input embeddings (and an
untied output head) get rows for them. The new rows start as the mean of the rows the tokenizer
already used (`--init mean`: the new tokens start out as "an average token", so the model's
text behaviour is unchanged at first; `sampled`: each row drawn from a normal with the old rows'
mean and covariance, distinct rows, as transformers' mean_resizing). Padding rows the model had
beyond its tokenizer are reused before new rows are added. The result is a directory transformers
and vLLM load, written whole or not at all; the command prints the `model.layout` block that
matches it (the `glm4voice` preset's tokens when the defaults are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from wavalign.config import LAYOUT_PRESETS, LayoutConfig

DEFAULTS = LAYOUT_PRESETS["glm4voice"]


class ExtendError(ValueError):
    """Why the vocabulary cannot be extended, in one line."""


def initialise_rows(weight: torch.Tensor, used: int, first_new: int, method: str, seed: int = 0) -> None:
    """Set rows first_new.. of `weight` (vocab x hidden) from rows 0..used-1 (the ones the old
    tokenizer used): their mean, or draws from N(mean, covariance) of them. In place."""
    old = weight[:used].double()
    mean = old.mean(dim=0)
    count = weight.shape[0] - first_new
    if count <= 0:
        return
    if method == "mean":
        weight[first_new:] = mean.to(weight.dtype)
        return
    centred = old - mean
    covariance = centred.T @ centred / max(1, used - 1)
    # a small ridge: with fewer used rows than dimensions the covariance is singular
    covariance += 1e-9 * torch.eye(covariance.shape[0], dtype=covariance.dtype)
    generator = torch.Generator().manual_seed(seed)
    scale = torch.linalg.cholesky(covariance)
    noise = torch.randn(count, old.shape[1], generator=generator, dtype=old.dtype)
    weight[first_new:] = (mean + noise @ scale.T).to(weight.dtype)


def layout_block(token_format: str, count: int, boa: str, eoa: str, eos: str, pad: str) -> dict:
    """The `model.layout` settings for the new directory: a preset's name when its tokens match."""
    fields = dict(
        speech_token_format=token_format,
        num_speech_tokens=count,
        begin_audio_token=boa,
        end_audio_token=eoa,
        eos_token=eos,
        pad_token=pad,
    )
    for name, preset in LAYOUT_PRESETS.items():
        if all(preset[key] == value for key, value in fields.items()):
            return {"preset": name}
    return {"preset": "custom", **fields, "interleave_ratio": DEFAULTS["interleave_ratio"]}


def extend_vocab(
    model_dir: Path,
    out_dir: Path,
    speech_tokens: int = DEFAULTS["num_speech_tokens"],
    token_format: str = DEFAULTS["speech_token_format"],
    begin_audio: str = DEFAULTS["begin_audio_token"],
    end_audio: str = DEFAULTS["end_audio_token"],
    init: str = "mean",
    pad_to_multiple_of: int = 1,
    trust_remote_code: bool = False,
    log=print,
) -> dict:
    """Write the extended model to out_dir (which must not exist); returns its `model.layout` block."""
    from tokenizers import AddedToken
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if "{i}" not in token_format:
        raise ExtendError(f"--token-format: {token_format!r} must contain '{{i}}' where the index goes")
    if speech_tokens < 1 or pad_to_multiple_of < 1:
        raise ExtendError(f"--speech-tokens {speech_tokens} and --pad-to-multiple-of {pad_to_multiple_of} must be >= 1")
    if not (model_dir / "config.json").is_file():
        raise ExtendError(f"--model: {model_dir} is not an HF model directory (no config.json)")
    if out_dir.exists():
        raise ExtendError(f"--out: {out_dir} exists; give a new folder (nothing is overwritten)")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    speech = [token_format.format(i=i) for i in range(speech_tokens)]
    present = [t for t in (begin_audio, end_audio, *speech) if t in tokenizer.get_vocab()]
    if present:
        raise ExtendError(f"--model: the tokenizer already has {present[0]!r} ({len(present)} of the new tokens)")
    if tokenizer.eos_token is None or tokenizer.pad_token is None:
        raise ExtendError(f"--model: the tokenizer needs an eos and a pad token (the layout names them); {model_dir}")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto", trust_remote_code=trust_remote_code)
    used = len(tokenizer)
    rows = model.get_input_embeddings().weight.shape[0]
    if used > rows:
        raise ExtendError(f"--model: its tokenizer has {used} tokens but the model only {rows} embedding rows")

    def special(token: str) -> AddedToken:
        return AddedToken(token, special=True, normalized=False)

    tokenizer.add_tokens([special(begin_audio), special(end_audio)], special_tokens=True)
    tokenizer.add_tokens([special(t) for t in speech], special_tokens=True)  # last, contiguous
    size = max(rows, -(-len(tokenizer) // pad_to_multiple_of) * pad_to_multiple_of)
    model.resize_token_embeddings(size, mean_resizing=False)
    with torch.no_grad():
        initialise_rows(model.get_input_embeddings().weight, used, used, init)
        head = model.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
            initialise_rows(head.weight, used, used, init, seed=1)
    model.config.vocab_size = size
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        layout = layout_block(
            token_format, speech_tokens, begin_audio, end_audio, tokenizer.eos_token, tokenizer.pad_token
        )
        (staging / "wavalign_layout.json").write_text(json.dumps(layout, indent=1) + "\n")
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    first = tokenizer.convert_tokens_to_ids(speech[0])
    log(
        f"{out_dir}: {used} -> {len(tokenizer)} tokens ({begin_audio}, {end_audio}, {speech[0]}..{speech[-1]} "
        f"at ids {first}..{first + speech_tokens - 1}), {rows} -> {size} embedding rows, new rows: {init}"
    )
    return layout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wavalign.extend_vocab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, required=True, help="the text LM's HF directory")
    parser.add_argument("--out", type=Path, required=True, help="a new folder for the speech LM")
    parser.add_argument("--speech-tokens", type=int, default=DEFAULTS["num_speech_tokens"])
    parser.add_argument("--token-format", default=DEFAULTS["speech_token_format"])
    parser.add_argument("--begin-audio", default=DEFAULTS["begin_audio_token"])
    parser.add_argument("--end-audio", default=DEFAULTS["end_audio_token"])
    parser.add_argument("--init", choices=("mean", "sampled"), default="mean")
    parser.add_argument("--pad-to-multiple-of", type=int, default=1, help="embedding rows (e.g. 64 on GPUs)")
    parser.add_argument("--trust-remote-code", action="store_true", help="the model ships its own modeling code")
    args = parser.parse_args(argv)
    try:
        layout = extend_vocab(
            args.model,
            args.out,
            args.speech_tokens,
            args.token_format,
            args.begin_audio,
            args.end_audio,
            args.init,
            args.pad_to_multiple_of,
            args.trust_remote_code,
        )
    except (ExtendError, OSError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    LayoutConfig(**layout)  # what the printed block resolves to is a valid layout section
    print("model.layout for pipeline.yaml (set the interleave_ratio your data uses):")
    print("  layout:\n" + "".join(f"    {key}: {json.dumps(value)}\n" for key, value in layout.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
