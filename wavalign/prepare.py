"""python -m wavalign.prepare: (audio, transcript, prompt) rows -> training rows, as a Ray Data job.

    python -m wavalign.prepare --manifest rows.jsonl --out prepared/ [--config pipeline.yaml] [--set k=v]
        [--tokenizer mel_kmeans | package.module:Class] [--tokenizer-kwargs JSON] [--codebook-size N]
        [--max-seconds 30] [--shard-rows 256] [--workers 2] [--gpus-per-worker 0] [--address ADDR]

The manifest (JSONL, CSV or Parquet) has a row per spoken answer: `audio` (a 16-bit PCM WAV file,
relative to the manifest's folder or absolute), `transcript` (what it says), `prompt` (the user
turn), optionally `task_type` (default s2s), `id`, `system` (a system turn), and any other column,
carried into the output (e.g. `answer` for a verifiable reward). Each row's audio is read and
resampled, turned into speech codes by the speech tokenizer (a plug-in class with
encode(audios) -> list of code lists, built once per Ray Data worker with --tokenizer-kwargs; on GPUs
with --gpus-per-worker), and interleaved with the transcript's text tokens by the model's layout
(model.path's tokenizer and model.layout; the toy model when null): the training schema of
wavalign/data.py, written as Parquet shards `part-NNNNN.parquet` of --shard-rows manifest rows each,
every one validated by the data reader. The built-in tokenizer, `mel_kmeans`
(wavalign/speech/mel_codec.py), needs a codebook: --tokenizer-kwargs '{"codebook": FILE}', or, without
one, a codebook of --codebook-size codes (default: the layout's speech vocabulary) fitted on the
manifest's audio and saved as <out>/codebook.safetensors (reward.speech_decoder can decode with it:
wavalign.speech.codebook:MelKMeansDecoder).

Rows that cannot be used (unreadable or silent audio, an empty transcript or prompt, audio over
--max-seconds, more tokens than model.max_model_len) are counted and listed with their reason in
<out>/rejects.jsonl, never dropped unseen. Each shard is published whole (temporary name, then
moved) with its marker part-NNNNN.json; run again, the job skips the shards already marked
(resuming where it stopped). Progress goes to stdout, a line per shard.
"""

from __future__ import annotations

import argparse
import csv
import gc
import itertools
import json
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from wavalign.atomic import write_text_atomic
from wavalign.node_inputs import policy_directory
from wavalign.ports import unreachable

BUILTIN_TOKENIZERS = {"mel_kmeans": "wavalign.speech.codebook:MelKMeansTokenizer"}
REQUIRED_COLUMNS = ("audio", "transcript", "prompt")
CODEBOOK = "codebook.safetensors"  # fitted into --out when --tokenizer-kwargs names none
FIT_FRAMES = 50_000  # the most log-mel frames the codebook is fitted on


class PrepareError(ValueError):
    """A problem with the job's inputs as a whole: one line naming what and where."""


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """The manifest's rows (JSONL, CSV or Parquet), each with the required columns."""
    if not path.is_file():
        raise PrepareError(f"--manifest: {path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        elif suffix == ".csv":
            with open(path, newline="", encoding="utf-8-sig") as handle:
                rows = list(csv.DictReader(handle))
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        else:
            raise PrepareError(f"--manifest: {path}: expected .jsonl, .csv or .parquet")
    except (ValueError, OSError) as err:
        if isinstance(err, PrepareError):
            raise
        raise PrepareError(f"--manifest: {path}: not readable as {suffix[1:]} ({type(err).__name__}: {err})") from None
    if not rows:
        raise PrepareError(f"--manifest: {path}: no rows")
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise PrepareError(f"--manifest: {path}: row {number}: expected an object, got {type(row).__name__}")
        missing = [c for c in REQUIRED_COLUMNS if c not in row]
        if missing:
            raise PrepareError(f"--manifest: {path}: row {number}: no {', '.join(missing)} column")
    return rows


class Preparer:
    """One Ray Data worker's stage: audio -> codes -> a training row (or the reason it is rejected).
    Built once per worker (the tokenizer loads there)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        from wavalign.config import LayoutConfig
        from wavalign.model_files import load_tokenizer_and_layout
        from wavalign.plugins import class_factory

        self.s = settings
        self.text, self.layout = load_tokenizer_and_layout(
            settings["model_dir"],
            LayoutConfig(**settings["layout"]),
            settings["trust_remote_code"],
            settings["text_tokenizer_class"],
        )
        build = class_factory(
            settings["tokenizer"], settings["tokenizer_kwargs"], "--tokenizer", "encode", "audios", "a speech tokenizer"
        )
        self.tokenizer = build()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """batch["item"]: manifest rows as JSON text (columns of any type travel as one schema)."""
        rows = [json.loads(item) for item in batch["item"]]
        audios, reasons = [], []
        for row in rows:
            audio, reason = self._audio(row)
            audios.append(audio)
            reasons.append(reason)
        usable = [i for i, reason in enumerate(reasons) if reason is None]
        codes = self.tokenizer.encode([audios[i] for i in usable]) if usable else []
        out = []
        for index, row in enumerate(rows):
            if reasons[index] is None:
                built, reasons[index] = self._row(row, codes[usable.index(index)])
            else:
                built = None
            out.append(json.dumps(built) if built is not None else "")
        return {"row": [r["row"] for r in rows], "prepared": out, "reject": [r or "" for r in reasons]}

    def _audio(self, row: dict[str, Any]):
        if not str(row.get("transcript") or "").strip():
            return None, "empty transcript"
        if not str(row.get("prompt") or "").strip():
            return None, "empty prompt"
        path, audio, err = manifest_audio(row["audio"], self.s["manifest_dir"])
        if err is not None:
            return None, f"unreadable audio {path}: {type(err).__name__}: {err}"
        if audio.seconds > self.s["max_seconds"]:
            return None, f"audio of {audio.seconds:.1f} s > --max-seconds {self.s['max_seconds']:g}"
        if max(map(abs, audio.samples), default=0.0) <= 1e-4:
            return None, f"silent audio {path}"
        return audio, None

    def _row(self, row: dict[str, Any], codes: list[int]):
        from wavalign.interleave import interleave

        layout, encode = self.layout, self.text.encode
        n_speech = layout.speech_end - layout.speech_start
        bad = [c for c in codes if not 0 <= c < n_speech]
        if bad:
            return None, f"the tokenizer gave code {bad[0]}, outside the layout's {n_speech} speech tokens"
        messages = ([{"role": "system", "content": row["system"]}] if row.get("system") else []) + [
            {"role": "user", "content": str(row["prompt"])}
        ]
        prompt = self.text.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt_ids = encode(prompt, add_special_tokens=False)
        text_ids = encode(str(row["transcript"]).strip() + "\n", add_special_tokens=False)
        reference = [*interleave(text_ids, [layout.speech_start + c for c in codes], layout), layout.eos_id]
        if len(prompt_ids) > self.s["max_prompt_tokens"]:
            return None, f"a prompt of {len(prompt_ids)} tokens > data.max_prompt_tokens"
        if len(prompt_ids) + len(reference) > self.s["max_model_len"]:
            total = len(prompt_ids) + len(reference)
            return None, f"{total} tokens (prompt {len(prompt_ids)} + answer {len(reference)}) > model.max_model_len"
        carried = {k: v for k, v in row.items() if k not in (*REQUIRED_COLUMNS, "row", "system", "id", "task_type")}
        return {
            **carried,
            "id": str(row["id"]) if row.get("id") not in (None, "") else f"row-{row['row'] + 1}",
            "task_type": str(row.get("task_type") or "s2s"),
            "messages": messages,
            "question_text": str(row["prompt"]),
            "sft_target_text": str(row["transcript"]).strip(),
            "prompt_token_ids": prompt_ids,
            "reference_token_ids": reference,
        }, None


def manifest_audio(audio_column: Any, manifest_dir: str):
    """(the path, its Audio or None, the error or None) of a manifest row's `audio`: relative to
    the manifest's folder unless absolute."""
    from wavalign.audio import read_wav

    path = Path(str(audio_column))
    path = path if path.is_absolute() else Path(manifest_dir) / path
    try:
        return path, read_wav(path), None
    except (OSError, EOFError, ValueError) as err:
        return path, None, err


def frames_of(batch: dict[str, Any], manifest_dir: str, max_seconds: float) -> dict[str, Any]:
    """The log-mel frames of a batch's readable audio (for fitting the codebook), flattened."""
    from wavalign.speech.mel_codec import MelFrames

    mel, frames = MelFrames(), []
    for audio_column in batch["audio"]:
        _, audio, err = manifest_audio(audio_column, manifest_dir)
        if err is None and audio.seconds <= max_seconds:  # unreadable: the preparation rejects it
            frames.extend(mel.log_mel(audio).tolist())
    return {"frame": frames}


def within_stall_deadline(rows: Iterable[Any], stall_s: float, what: str) -> Iterator[Any]:
    """`rows` as they come, read on a thread of their own: more than stall_s without the next one
    (e.g. no free CPU or GPU on the cluster for the workers) is an error naming what stalled."""
    handoff: queue.Queue = queue.Queue(maxsize=64)
    done, stop = object(), threading.Event()

    def hand(item: Any) -> bool:
        while not stop.is_set():  # the reading side may stop early (or fail): never block forever
            try:
                handoff.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for row in rows:
                if not hand(row):
                    return
            hand(done)
        except BaseException as err:  # re-raised on the reading side
            hand(err)

    threading.Thread(target=read, name=f"prepare-{what}", daemon=True).start()
    try:
        while True:
            try:
                item = handoff.get(timeout=stall_s)
            except queue.Empty:
                raise PrepareError(
                    f"{what}: no row for {stall_s:g} s (--stall-timeout-s); are there free CPUs "
                    "(and GPUs, with --gpus-per-worker) on the cluster for --workers?"
                ) from None
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except PrepareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", default="pipeline.yaml", help="its model section gives the tokenizer and layout")
    parser.add_argument("--set", action="append", default=[], help="config override key.path=value")
    parser.add_argument("--tokenizer", default="mel_kmeans")
    parser.add_argument("--tokenizer-kwargs", default="{}", help="JSON object: the tokenizer's constructor arguments")
    parser.add_argument("--codebook-size", type=int, default=None)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument("--shard-rows", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument(
        "--stall-timeout-s", type=float, default=300.0, help="the most seconds the job waits for its next row"
    )
    parser.add_argument(
        "--address", default=None, help="a running Ray cluster (or $RAY_ADDRESS); default: a new local one"
    )
    return parser.parse_args(argv)


def run(args) -> int:
    from wavalign.config import ConfigError
    from wavalign.config_file import read_config

    try:
        cfg = read_config(args.config, args.set)
        kwargs = json.loads(args.tokenizer_kwargs)
    except (ConfigError, ValueError, OSError) as err:
        raise PrepareError(str(err).splitlines()[0]) from None
    if not isinstance(kwargs, dict):
        raise PrepareError(f"--tokenizer-kwargs: expected a JSON object, got {args.tokenizer_kwargs}")
    for name in ("shard_rows", "workers"):
        if getattr(args, name) < 1:
            raise PrepareError(f"--{name.replace('_', '-')}: {getattr(args, name)} must be >= 1")
    for name in ("max_seconds", "stall_timeout_s"):
        if not getattr(args, name) > 0:
            raise PrepareError(f"--{name.replace('_', '-')}: {getattr(args, name)} must be > 0")
    if args.gpus_per_worker < 0:
        raise PrepareError(f"--gpus-per-worker: {args.gpus_per_worker} must be >= 0")
    rows = read_manifest(args.manifest)
    tokenizer = BUILTIN_TOKENIZERS.get(args.tokenizer, args.tokenizer)
    codebook_to_fit = args.tokenizer == "mel_kmeans" and "codebook" not in kwargs
    if codebook_to_fit:
        kwargs["codebook"] = str(args.out / CODEBOOK)
    from wavalign.plugins import PluginError, class_factory

    try:  # before any cluster starts: a plug-in that cannot work is one line
        class_factory(tokenizer, kwargs, "--tokenizer", "encode", "audios", "a speech tokenizer")
    except PluginError as err:
        raise PrepareError(str(err)) from None
    # "local" when none is named: a new cluster, never whatever /tmp/ray last recorded (possibly dead)
    address = args.address or os.environ.get("RAY_ADDRESS") or "local"
    if problem := unreachable(address, "--address" if args.address else "RAY_ADDRESS"):
        raise PrepareError(problem)
    model_dir = policy_directory(cfg)
    from wavalign.model_files import load_tokenizer_and_layout, tokenizer_class_of

    try:  # the policy's tokenizer and speech layout, before any cluster starts
        text_tokenizer, layout = load_tokenizer_and_layout(model_dir, cfg.model.layout, cfg.model.trust_remote_code)
    except (OSError, ValueError) as err:
        raise PrepareError(f"model.path: {model_dir}: {str(err).splitlines()[0]}") from None
    args.out.mkdir(parents=True, exist_ok=True)
    # Ray Data's usage telemetry off for this job: it reports each execution's end to an actor and
    # polls the cluster every 10 s from a thread that outlives ray.shutdown(). A call into Ray after
    # the shutdown below makes Ray end this process with exit code 1 ("The core worker has already
    # been shutdown": seen once, the benchmark's second job in the same process never started).
    os.environ.setdefault("RAY_DATA_USAGE_DISABLED", "1")
    import ray

    from wavalign.ray_join import ClusterUnreachable, join_cluster

    try:
        join_cluster(address, logging_level="ERROR", log_to_driver=False)
    except ClusterUnreachable as err:
        raise PrepareError(str(err)) from None
    try:
        if codebook_to_fit:
            fit_codebook_into_out(args, rows, layout)
        settings = {
            "model_dir": str(model_dir),
            "layout": cfg.model.layout.model_dump(),
            "trust_remote_code": cfg.model.trust_remote_code,
            # each worker loads the policy's tokenizer by the class AutoTokenizer chose here (model_files.py)
            "text_tokenizer_class": tokenizer_class_of(text_tokenizer),
            "tokenizer": tokenizer,
            "tokenizer_kwargs": kwargs,
            "manifest_dir": str(args.manifest.resolve().parent),
            "max_seconds": args.max_seconds,
            "max_model_len": cfg.model.max_model_len,
            "max_prompt_tokens": cfg.data.max_prompt_tokens,
        }
        prepare_shards(args, rows, settings)
    finally:
        gc.collect()  # Ray Data's handles in reference cycles released while Ray is up, not after
        ray.shutdown()
    return validate(args, cfg, text_tokenizer, layout)


def fit_codebook_into_out(args, rows, layout) -> None:
    """<out>/codebook.safetensors fitted on the manifest's audio (as many codes as the policy's
    layout has speech tokens, unless --codebook-size), unless a previous run of this job fitted it
    (then reused: the shards already written used it)."""
    import ray
    import torch

    from wavalign.speech.codebook import save_codebook
    from wavalign.speech.mel_codec import MelSettings, fit_codebook

    path = args.out / CODEBOOK
    if path.is_file():
        print(f"prepare: codebook {path} (from the earlier run)", flush=True)
        return
    size = args.codebook_size or (layout.speech_end - layout.speech_start)
    started = time.monotonic()
    dataset = ray.data.from_items([{"audio": str(r["audio"])} for r in rows])
    manifest_dir = str(args.manifest.resolve().parent)
    frames = dataset.map_batches(
        frames_of, batch_size=8, fn_kwargs={"manifest_dir": manifest_dir, "max_seconds": args.max_seconds}
    )
    taken = itertools.islice(within_stall_deadline(frames.iter_rows(), args.stall_timeout_s, "codebook"), FIT_FRAMES)
    found = torch.tensor([r["frame"] for r in taken], dtype=torch.float32)
    if found.shape[0] < size:
        raise PrepareError(f"--codebook-size: {found.shape[0]} frames of readable audio cannot fit {size} codes")
    save_codebook(path, fit_codebook(found, size), MelSettings())
    print(
        f"prepare: codebook of {size} codes fitted on {found.shape[0]} frames "
        f"in {time.monotonic() - started:.1f}s: {path}",
        flush=True,
    )


def prepare_shards(args, rows: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    """Every shard not marked done: its rows through the Preparer on Ray Data (in manifest order),
    then the shard, its rejects and its marker written, in that order."""
    import ray

    shards = math.ceil(len(rows) / args.shard_rows)
    pending = [k for k in range(shards) if not (args.out / f"part-{k:05d}.json").is_file()]
    if len(pending) < shards:
        print(f"prepare: {shards - len(pending)} of {shards} shards done before; {len(pending)} to go", flush=True)
    if not pending:
        return
    items = [
        {**rows[i], "row": i}
        for k in pending
        for i in range(k * args.shard_rows, min(len(rows), (k + 1) * args.shard_rows))
    ]
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    dataset = ray.data.from_items([{"item": json.dumps(item, default=str)} for item in items])
    prepared = dataset.map_batches(
        Preparer,
        fn_constructor_kwargs={"settings": settings},
        batch_size=8,
        concurrency=args.workers,
        num_gpus=args.gpus_per_worker,
        num_cpus=1,
    )
    started, done, rejected = time.monotonic(), 0, 0
    current, kept, rejects = None, [], []
    for result in within_stall_deadline(prepared.iter_rows(), args.stall_timeout_s, "preparation"):
        row = int(result["row"])
        shard = row // args.shard_rows
        if current is not None and shard != current:
            write_shard(args.out, current, kept, rejects)
            done, rejected = _progress(args, current, kept, rejects, done, rejected, len(items), started)
            kept, rejects = [], []
        current = shard
        if result["reject"]:
            original = rows[row]
            rejects.append(
                {
                    "row": row + 1,
                    "id": original.get("id"),
                    "audio": str(original.get("audio")),
                    "reason": result["reject"],
                }
            )
        else:
            kept.append(json.loads(result["prepared"]))
    if current is not None:
        write_shard(args.out, current, kept, rejects)
        _progress(args, current, kept, rejects, done, rejected, len(items), started)


def _progress(args, shard, kept, rejects, done, rejected, total, started):
    done, rejected = done + len(kept) + len(rejects), rejected + len(rejects)
    elapsed = time.monotonic() - started
    rate = done / max(elapsed, 1e-9)
    left = (total - done) / rate if rate else float("nan")
    print(
        f"prepare: part-{shard:05d}: {len(kept)} rows, {len(rejects)} rejected | {done}/{total} "
        f"({rejected} rejected so far) | {rate:.1f} utterances/s | {elapsed:.1f}s elapsed | ETA {left:.0f}s",
        flush=True,
    )
    return done, rejected


def write_shard(out: Path, shard: int, rows: list[dict[str, Any]], rejects: list[dict[str, Any]]) -> None:
    """The shard's Parquet (if it kept any row), then its marker with its rejects: whole files only."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wavalign.atomic import atomic_path

    if rows:
        with atomic_path(out / f"part-{shard:05d}.parquet") as partial:
            pq.write_table(pa.Table.from_pylist(rows), partial)
    marker = json.dumps({"rows": len(rows), "rejects": rejects}, indent=1, default=str)
    write_text_atomic(out / f"part-{shard:05d}.json", marker)


def validate(args, cfg, tokenizer, layout) -> int:
    """Every shard read back by the data reader with the model's layout; rejects.jsonl and the
    summary written from the markers."""
    from wavalign.data import DataError, read_rows

    markers = sorted(args.out.glob("part-*.json"))
    rejects = [r for m in markers for r in json.loads(m.read_text())["rejects"]]
    write_text_atomic(args.out / "rejects.jsonl", "".join(json.dumps(r) + "\n" for r in rejects))
    shards, total = sorted(args.out.glob("part-*.parquet")), 0
    for shard in shards:
        import pyarrow.parquet as pq

        kinds = tuple(set(pq.read_table(shard, columns=["task_type"]).column(0).to_pylist()))
        try:
            read = read_rows(
                shard,
                vocab_size=len(tokenizer),
                max_prompt_tokens=cfg.data.max_prompt_tokens,
                layout=layout,
                task_types=kinds,
            )
        except DataError as err:
            raise PrepareError(f"the prepared shard does not read back: {err}") from None
        total += len(read.rows)
    summary = {
        "manifest": str(args.manifest),
        "rows": total,
        "rejected": len(rejects),
        "shards": [s.name for s in shards],
    }
    write_text_atomic(args.out / "prepare.json", json.dumps(summary, indent=1))
    print(
        f"prepare: done: {total} training rows in {len(shards)} shards, {len(rejects)} rejected "
        f"(listed in {args.out / 'rejects.jsonl'})",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
