"""python -m wavalign.prepare end to end on real speech: the toy task's answers spoken by flite,
with planted bad rows, through the Ray Data job submitted to the session's cluster
(tests/integration/speech_data.py); its Parquet read back by the data reader, its rejects listed,
the codes decoded back, and its resume. (launch.py training on the shards with the asr_consistency
reward: the ablation command's run, test_ablate.py.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq

from tests.integration.conftest import ROOT
from tests.integration.speech_data import GOOD, PLANTED, PREPARE, prepare_args
from wavalign.audio import read_wav


def test_the_prepared_shards_read_back_as_training_rows(prepared_speech, toy_assets, cfg):
    from wavalign.data import read_rows
    from wavalign.interleave import split_channels
    from wavalign.model_files import load_tokenizer_and_layout

    prepared = prepared_speech
    tokenizer, layout = load_tokenizer_and_layout(toy_assets.model_dir, cfg.model.layout)
    assert [s.name for s in prepared.shards] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    read = [
        r
        for s in prepared.shards
        for r in read_rows(s, vocab_size=len(tokenizer), max_prompt_tokens=512, layout=layout).rows
    ]
    good = [r for r in prepared.rows if r["id"] not in {p[0] for p in PLANTED}]
    assert [r.row_id for r in read] == [r["id"] for r in good]  # every good row, in manifest order
    for row, source in zip(read, good):
        text, speech = split_channels(row.reference_token_ids[:-1], layout)  # eos last
        assert tokenizer.decode(text).strip() == source["transcript"] and row.sft_target_text == source["transcript"]
        assert 10 <= len(speech) <= 40 and row.answer == source["answer"]  # 12.5 codes/s of ~1-3 s of speech
        assert tokenizer.decode(row.prompt_token_ids).startswith("<|im_start|>user\n" + source["prompt"])
    assert "prepare: codebook of 256 codes fitted on" in prepared.output and "utterances/s" in prepared.output
    assert json.loads((prepared.out / "prepare.json").read_text())["rows"] == GOOD


def test_bad_rows_are_listed_with_their_reason_and_counted(prepared_speech):
    rejects = [json.loads(line) for line in (prepared_speech.out / "rejects.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rejects] == [row_id for row_id, _, _ in PLANTED], rejects
    assert all(reason in r["reason"] for r, (_, _, reason) in zip(rejects, PLANTED)), rejects
    assert f"done: {GOOD} training rows in 3 shards, {len(PLANTED)} rejected" in prepared_speech.output


def test_the_codes_decode_back_to_audio_of_the_same_length(prepared_speech):
    from wavalign.speech.codebook import MelKMeansDecoder, MelKMeansTokenizer

    codebook = str(prepared_speech.out / "codebook.safetensors")
    audio = read_wav(prepared_speech.manifest.parent / prepared_speech.rows[0]["audio"])
    tokenizer = MelKMeansTokenizer(codebook)
    (codes,) = tokenizer.encode([audio])
    back = MelKMeansDecoder(codebook).decode(codes)
    assert abs(back.seconds - audio.seconds) <= 0.08 and back.sample_rate == 16000
    (again,) = tokenizer.encode([back])
    assert sum(a == b for a, b in zip(codes, again)) >= 0.6 * len(codes)  # the code sequence round-trips


def test_a_run_again_resumes_where_it_stopped(prepared_speech, toy_assets, address, tmp_path):
    """On a copy (the session's shards stay as they are for the ablation's run)."""
    import shutil

    out = shutil.copytree(prepared_speech.out, tmp_path / "prepared")
    before = pq.read_table(out / "part-00001.parquet").to_pylist()
    (out / "part-00001.json").unlink()  # as if it had stopped before marking the second shard
    done = subprocess.run(
        [sys.executable, *PREPARE, *prepare_args(prepared_speech.manifest, out, toy_assets), "--address", address],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "prepare: codebook " in done.stdout and "(from the earlier run)" in done.stdout
    assert "2 of 3 shards done before; 1 to go" in done.stdout and "part-00000:" not in done.stdout
    assert pq.read_table(out / "part-00001.parquet").to_pylist() == before
