"""Preparation benchmark: utterances/s of `python -m wavalign.prepare` (the Ray Data job: audio read,
mel_kmeans tokenizer, interleaving, Parquet shards, read back by the data reader) against the bare
tokenizer encoding the same audio in this process (the baseline: what the job must not lose much
of), in one run on the same utterances: toy-task answers spoken by flite, tokenized with one
codebook fitted beforehand (the fit is timed on its own).

Prints utterances/s of both and the ratio (the job pays Ray Data's start-up and the files; with
--workers 2 on 2 cores it may pass 1). It joins the cluster in $RAY_ADDRESS if set. Usage:
    .venv/bin/python benchmarks/prepare.py [--utterances 96] [--workers 2] [--set toy.assets_dir=...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this file's folder leads sys.path, where learner.py would shadow the `learner` package.
sys.path[0] = str(Path(__file__).resolve().parents[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=96)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()

    import json
    import os

    import torch

    from wavalign import prepare
    from wavalign.audio import read_wav
    from wavalign.speech.codebook import MelKMeansTokenizer, save_codebook
    from wavalign.speech.mel_codec import MelFrames, MelSettings, fit_codebook
    from wavalign.speech.synthesize import available, toy_manifest

    if not available("flite"):
        sys.exit("error: flite is not installed (apt-get install flite, or scripts/install.sh as root)")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        rows = toy_manifest(folder, args.utterances)
        (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        audios = [read_wav(folder / r["audio"]) for r in rows]
        started = time.perf_counter()
        frames = torch.cat([MelFrames().log_mel(a) for a in audios])
        save_codebook(folder / "codebook.safetensors", fit_codebook(frames, min(256, frames.shape[0])), MelSettings())
        fit_s = time.perf_counter() - started

        tokenizer = MelKMeansTokenizer(str(folder / "codebook.safetensors"))
        started = time.perf_counter()
        tokenizer.encode(audios)
        bare = len(audios) / (time.perf_counter() - started)

        kwargs = json.dumps({"codebook": str(folder / "codebook.safetensors")})
        command = [
            "--manifest",
            str(folder / "manifest.jsonl"),
            "--out",
            str(folder / "out"),
            "--tokenizer-kwargs",
            kwargs,
        ]
        command += ["--workers", str(args.workers), *(a for s in args.set for a in ("--set", s))]
        command += ["--address", os.environ["RAY_ADDRESS"]] if os.environ.get("RAY_ADDRESS") else []
        started = time.perf_counter()
        code = prepare.main(command)
        job = len(audios) / (time.perf_counter() - started)
        if code != 0:
            sys.exit(f"error: the preparation job failed (exit {code})")
    seconds = sum(a.seconds for a in audios)
    print(f"{len(audios)} utterances, {seconds:.1f} s of speech; codebook fit {fit_s:.1f}s")
    print(f"bare tokenizer: {bare:.1f} utterances/s; preparation job ({args.workers} workers): {job:.1f} utterances/s")
    print(f"prepare job / bare tokenizer utterances/s = {job / bare:.3f}")


if __name__ == "__main__":
    main()
