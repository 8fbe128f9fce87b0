"""Preparation benchmark: utterances/s of `python -m wavalign.prepare` (the Ray Data job: audio read,
mel_kmeans tokenizer, interleaving, Parquet shards, read back by the data reader) against the bare
tokenizer encoding the same audio in this process (the baseline: what the job must not lose much
of), in one run on the same utterances: toy-task answers spoken by flite, tokenized with one
codebook fitted beforehand (the fit is timed on its own).

The job runs twice, over half the utterances and over all of them: the difference in wall time is
what the second half cost, so Ray Data's start-up (actors, the tokenizer's load) falls out. Prints
utterances/s of both, the ratio, and the whole job's rate with its start-up. It joins the cluster in
$RAY_ADDRESS if set. Usage:
    .venv/bin/python benchmarks/prepare.py [--utterances 48] [--rows 1920] [--workers 2] [--set toy.assets_dir=...]
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
    parser.add_argument("--utterances", type=int, default=48, help="distinct utterances synthesized")
    parser.add_argument("--rows", type=int, default=1920, help="manifest rows, cycling over the utterances")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()

    import contextlib
    import io
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
        spoken = toy_manifest(folder, args.utterances)
        rows = [{**spoken[i % len(spoken)], "id": f"row-{i}"} for i in range(args.rows)]
        audios = [read_wav(folder / r["audio"]) for r in spoken]
        started = time.perf_counter()
        frames = torch.cat([MelFrames().log_mel(a) for a in audios])
        save_codebook(folder / "codebook.safetensors", fit_codebook(frames, min(256, frames.shape[0])), MelSettings())
        fit_s = time.perf_counter() - started

        tokenizer = MelKMeansTokenizer(str(folder / "codebook.safetensors"))
        started = time.perf_counter()
        tokenizer.encode([audios[i % len(audios)] for i in range(args.rows)])
        bare = args.rows / (time.perf_counter() - started)

        kwargs = json.dumps({"codebook": str(folder / "codebook.safetensors")})

        def job_seconds(rows_used: list[dict], name: str) -> float:
            """Wall seconds of the preparation job over `rows_used` (Ray Data's start-up included)."""
            manifest = folder / f"{name}.jsonl"
            manifest.write_text("".join(json.dumps(r) + "\n" for r in rows_used))
            command = ["--manifest", str(manifest), "--out", str(folder / name), "--tokenizer-kwargs", kwargs]
            command += ["--workers", str(args.workers), *(a for s in args.set for a in ("--set", s))]
            command += ["--address", os.environ["RAY_ADDRESS"]] if os.environ.get("RAY_ADDRESS") else []
            started = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                code = prepare.main(command)
            if code != 0:
                sys.exit(f"error: the preparation job failed (exit {code})")
            return time.perf_counter() - started

        # the job over half the utterances, then over all: the difference is what the other half cost
        half_s, whole_s = job_seconds(rows[: len(rows) // 2], "half"), job_seconds(rows, "whole")
    marginal = (len(rows) - len(rows) // 2) / max(whole_s - half_s, 1e-9)
    seconds = sum(audios[i % len(audios)].seconds for i in range(args.rows))
    print(f"{args.rows} rows ({len(audios)} distinct utterances), {seconds:.0f} s of speech; codebook fit {fit_s:.1f}s")
    print(
        f"bare tokenizer: {bare:.1f} utterances/s; preparation job ({args.workers} workers): {marginal:.1f} "
        f"utterances/s beyond its start-up ({whole_s:.1f}s for all, {half_s:.1f}s for half: "
        f"{len(rows) / whole_s:.1f} utterances/s with it)"
    )
    print(f"prepare job / bare tokenizer utterances/s = {marginal / bare:.3f} (beyond start-up)")


if __name__ == "__main__":
    main()
