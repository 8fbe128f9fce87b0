"""python -m wavalign.extend_vocab on a tiny random text LM (a Llama with an untied head and padded
embedding rows, built here with a text-only tokenizer): the speech vocabulary is appended last and
contiguous, resolves as the printed layout says, the new rows are the mean of the used rows (hand
computed), the text behaviour is unchanged; bad input is one line. (vLLM loads the result:
tests/integration/test_model_families.py.)"""

import json

import pytest
import torch
import transformers  # (its models load on first use: seconds that only this module's tests spend)

from wavalign.config import LayoutConfig
from wavalign.extend_vocab import ExtendError, extend_vocab, initialise_rows, main
from wavalign.model_files import load_tokenizer_and_layout
from wavalign.toy.tokenizer import build_text_tokenizer

CORPUS = ["what is three plus four", "three plus four is seven", "hello there"] * 3


@pytest.fixture(scope="module")
def text_lm(tmp_path_factory):
    """A text LM whose embedding has 8 padding rows beyond its tokenizer (as Qwen2.5's does)."""
    out = tmp_path_factory.mktemp("text_lm")
    tokenizer = build_text_tokenizer(CORPUS, eos="<|im_end|>", pad="<|endoftext|>")
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer) + 8,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=64,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_the_speech_vocabulary_is_appended_and_initialised_as_the_mean(text_lm, tmp_path):
    out = tmp_path / "speech_lm"
    layout = extend_vocab(text_lm, out, speech_tokens=256, token_format="<|audio_{i}|>", pad_to_multiple_of=64)
    assert layout == {"preset": "tiny"}  # the tiny preset's tokens, 256 of them
    assert json.loads((out / "wavalign_layout.json").read_text()) == layout
    before_tok, after_tok = (
        transformers.AutoTokenizer.from_pretrained(text_lm),
        transformers.AutoTokenizer.from_pretrained(out),
    )
    used = len(before_tok)
    assert len(after_tok) == used + 2 + 256
    tokenizer, resolved = load_tokenizer_and_layout(out, LayoutConfig(**layout))
    assert (resolved.boa_id, resolved.eoa_id, resolved.speech_start) == (used, used + 1, used + 2)
    before = transformers.AutoModelForCausalLM.from_pretrained(text_lm)
    after = transformers.AutoModelForCausalLM.from_pretrained(out)
    rows = after.get_input_embeddings().weight
    size = -(-(used + 258) // 64) * 64  # the tokens rounded up to 64 rows (the 8 padding rows taken first)
    assert rows.shape[0] == size == after.config.vocab_size == resolved.speech_end > used + 8
    old_rows = before.get_input_embeddings().weight
    assert torch.equal(rows[:used], old_rows[:used])
    mean = old_rows[:used].double().mean(0).float()
    assert torch.allclose(rows[used:], mean.expand(size - used, -1), atol=1e-7)  # padding rows reused too
    head, old_head = after.get_output_embeddings().weight, before.get_output_embeddings().weight
    assert torch.equal(head[:used], old_head[:used])
    assert torch.allclose(head[used:], old_head[:used].double().mean(0).float().expand(size - used, -1), atol=1e-7)
    ids = torch.tensor([before_tok.encode("what is three plus four")])
    with torch.no_grad():  # text in, the old tokens' logits out: unchanged
        assert torch.allclose(after(ids).logits[..., :used], before(ids).logits[..., :used], atol=1e-6)
    assert tokenizer.decode([resolved.speech_start, resolved.speech_start + 5], skip_special_tokens=True) == ""


def test_sampled_rows_follow_the_used_rows_mean_and_spread():
    weight = torch.zeros(1000 + 4000, 3)
    weight[:1000] = torch.randn(1000, 3, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 2.0, 0.5])
    weight[:1000] += torch.tensor([3.0, -1.0, 0.0])
    initialise_rows(weight, used=1000, first_new=1000, method="sampled")
    new = weight[1000:]
    assert torch.allclose(new.mean(0), weight[:1000].mean(0), atol=0.1)
    assert torch.allclose(new.std(0), weight[:1000].std(0), rtol=0.1)
    assert len({tuple(r.tolist()) for r in new}) == 4000  # distinct rows


def test_bad_input_is_one_line(text_lm, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    cases = [
        (["--model", str(text_lm), "--out", str(taken)], f"--out: {taken} exists; give a new folder"),
        (["--model", str(tmp_path), "--out", str(tmp_path / "x")], "is not an HF model directory"),
        (["--model", str(text_lm), "--out", str(tmp_path / "y"), "--token-format", "<|a|>"], "must contain '{i}'"),
        (
            ["--model", str(text_lm), "--out", str(tmp_path / "z"), "--begin-audio", "<|im_end|>"],
            "the tokenizer already has '<|im_end|>'",
        ),
    ]
    for argv, expected in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err and err.count("\n") == 1, err
    assert (taken / "keep.txt").read_text() == "mine" and not (tmp_path / "z").exists()
    with pytest.raises(ExtendError, match="--speech-tokens 0"):
        extend_vocab(text_lm, tmp_path / "w", speech_tokens=0)


def test_the_command_prints_the_layout_block(text_lm, tmp_path, capsys):
    assert main(["--model", str(text_lm), "--out", str(tmp_path / "glm"), "--speech-tokens", "300"]) == 0
    printed = capsys.readouterr().out
    assert 'preset: "custom"' in printed and "num_speech_tokens: 300" in printed  # not a preset's count
    assert not list(tmp_path.glob(".glm.*"))  # no staging folder left
