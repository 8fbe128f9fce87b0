"""The session's real speech: the toy task's answers spoken by flite, with planted bad rows,
prepared by `python -m wavalign.prepare` submitted to the session cluster with `ray job submit`.
Its shards are what the preparation tests check and what the ablation command's run trains on
(with the asr_consistency reward decoding responses with the fitted codebook)."""

from __future__ import annotations

import json
from array import array
from dataclasses import dataclass
from pathlib import Path

from tests.integration.pipeline_jobs import SubmittedJob
from wavalign.audio import Audio, read_wav, write_wav
from wavalign.speech.synthesize import toy_manifest

GOOD = 20
PREPARE = ("-m", "wavalign.prepare")
# (id, what the manifest row has wrong, the reason its reject names)
PLANTED = [
    ("missing", {"audio": "no-such.wav"}, "unreadable audio"),
    ("not-a-wav", {"audio": "not-audio.wav"}, "unreadable audio"),
    ("no-words", {"transcript": "  "}, "empty transcript"),
    ("too-long", {"audio": "long.wav"}, "> --max-seconds 6"),
    ("silent", {"audio": "silent.wav"}, "silent audio"),
]


@dataclass(frozen=True)
class PreparedSpeech:
    manifest: Path
    out: Path
    rows: list[dict]  # the manifest's rows, planted ones included
    output: str  # the job's output

    @property
    def shards(self) -> list[Path]:
        return sorted(self.out.glob("part-*.parquet"))

    def run_sets(self) -> dict[str, str]:
        """Config overrides that train on the shards and score with asr_consistency beside toy_answer
        (8 responses a step: each is decoded and transcribed, about a second apiece here)."""
        decoder = "{path: 'wavalign.speech.codebook:MelKMeansDecoder', kwargs: {codebook: '%s'}}"
        return {
            "data.train_files": "[" + ",".join(f'"{s}"' for s in self.shards) + "]",
            "train.rollout_batch_size": "8",
            "reward.functions": "[{name: toy_answer, weight: 0.5}, {name: asr_consistency, weight: 0.5}]",
            "reward.speech_decoder": decoder % (self.out / "codebook.safetensors"),
        }


def prepare_args(manifest: Path, out: Path, toy_assets) -> list[str]:
    return [
        "--manifest", str(manifest), "--out", str(out), "--set", f"toy.assets_dir={toy_assets.root}",
        "--shard-rows", "10", "--max-seconds", "6", "--workers", "1",
    ]  # fmt: skip


def prepare_speech(folder: Path, out: Path, toy_assets, job_server: str) -> PreparedSpeech:
    rows = toy_manifest(folder, GOOD)
    (folder / "not-audio.wav").write_text("not a WAV file")
    first = read_wav(folder / rows[0]["audio"])
    write_wav(folder / "long.wav", Audio(array("f", list(first.samples) * 4), first.sample_rate))
    write_wav(folder / "silent.wav", Audio(array("f", [0.0] * 16000), 16000))
    sources = list(rows)
    for position, (row_id, wrong, _) in enumerate(PLANTED):  # at rows 4, 8, 12, 16, 20 of 25
        rows.insert(3 + 4 * position, {**sources[position], "id": row_id, **wrong})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # submitted as operators submit training (the job finds the cluster by RAY_ADDRESS)
    job = SubmittedJob(job_server, prepare_args(manifest, out, toy_assets), out / "job.log", program=PREPARE)
    return PreparedSpeech(manifest, out, rows, job.finish())
