"""The tiny model loads in transformers with the toy tokenizer, whose ids agree with the data rows;
its warm start passed its quality gates. (vLLM samples of it: test_rollout_pool.py.)"""

from wavalign.data import read_rows
from wavalign.model_files import load_tokenizer_and_layout


def test_hf_loads_model_and_tokenizer_agrees_with_row_ids(toy_assets, cfg):
    from transformers import AutoModelForCausalLM

    tokenizer, layout = load_tokenizer_and_layout(toy_assets.model_dir, cfg.model.layout)
    model = AutoModelForCausalLM.from_pretrained(toy_assets.model_dir)
    assert 3e5 <= sum(p.numel() for p in model.parameters()) <= 5e6
    assert model.config.head_dim == 64 and layout.speech_end == len(tokenizer) == model.config.vocab_size
    rows = read_rows(toy_assets.data_file("train", ".jsonl"), vocab_size=len(tokenizer), max_prompt_tokens=128).rows
    for row in rows[:10]:
        text = tokenizer.decode(list(row.prompt_token_ids))
        assert tokenizer.encode(text) == list(row.prompt_token_ids)  # ids and text agree
        assert (
            tokenizer.decode(list(row.reference_token_ids), skip_special_tokens=True).split()
            == row.sft_target_text.split()
        )
    report = toy_assets.report
    assert 0.1 < report["train_sampled"]["semantic_accuracy"] < 0.9


def test_the_heldout_probe_trains_and_measures_both_splits(toy_assets, tmp_path):
    """wavalign.toy.heldout_probe (docs/heldout.md) end to end, shrunk: one step at one learning rate,
    one sample per prompt, the first 8 questions of each split (the script cannot rot; its figures
    are the docs')."""
    import json
    import subprocess
    import sys

    from tests.integration.conftest import ROOT

    out = tmp_path / "probe.json"
    done = subprocess.run(
        [sys.executable, "-m", "wavalign.toy.heldout_probe", "--lrs", "1e-4", "--steps", "1", "--every", "1"]
        + ["--samples", "1", "--questions", "8", "--set", f"toy.assets_dir={toy_assets.root}", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    curve = result["curves"]["1e-4"]
    assert [point["step"] for point in curve] == [0, 1] and result["train_questions"] == result["eval_questions"] == 8
    assert all(0 <= point[split]["sampled"] <= 1 for point in curve for split in ("train", "eval"))
