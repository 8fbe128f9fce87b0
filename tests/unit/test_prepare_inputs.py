"""python -m wavalign.prepare's own inputs: each problem is one line naming the option or the
manifest row, exit 2, before any cluster starts and with nothing written; and the stall deadline
on the Ray Data rows (a job whose workers never get a CPU must end, not wait)."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import ROOT
from wavalign.prepare import PrepareError, main, within_stall_deadline

ROW = {"audio": "a.wav", "transcript": "hello", "prompt": "say hello"}


def _run(tmp_path, capsys, manifest_text: str | None = None, suffix: str = ".jsonl", extra=()):
    manifest = tmp_path / f"rows{suffix}"
    if manifest_text is not None:
        manifest.write_text(manifest_text)
    out = tmp_path / "prepared"
    code = main(["--manifest", str(manifest), "--out", str(out), "--config", str(ROOT / "pipeline.yaml"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert not out.exists()  # nothing written
    return err[0]


GOOD = json.dumps(ROW) + "\n"


@pytest.mark.parametrize(
    ("text", "suffix", "expected"),
    [
        (None, ".jsonl", "rows.jsonl: no such file"),
        (GOOD, ".txt", "rows.txt: expected .jsonl, .csv or .parquet"),
        ('{"audio": "a.wav",\n', ".jsonl", "rows.jsonl: not readable as jsonl (JSONDecodeError"),
        ("", ".jsonl", "rows.jsonl: no rows"),
        ("[1, 2]\n", ".jsonl", "rows.jsonl: row 1: expected an object, got list"),
        (GOOD + '{"audio": "b.wav", "prompt": "p"}\n', ".jsonl", "rows.jsonl: row 2: no transcript column"),
        ("audio,prompt\na.wav,hi\n", ".csv", "rows.csv: row 1: no transcript column"),
        ("not parquet", ".parquet", "rows.parquet: not readable as parquet"),
    ],
)
def test_a_manifest_that_cannot_be_used_is_one_line_naming_file_and_row(tmp_path, capsys, text, suffix, expected):
    line = _run(tmp_path, capsys, text, suffix)
    assert line.startswith("error: --manifest: ") and expected in line


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--tokenizer-kwargs", "[1]"], "--tokenizer-kwargs: expected a JSON object, got [1]"),
        (["--tokenizer-kwargs", "{bad"], "Expecting property name"),
        (["--shard-rows", "0"], "--shard-rows: 0 must be >= 1"),
        (["--workers", "0"], "--workers: 0 must be >= 1"),
        (["--max-seconds", "0"], "--max-seconds: 0.0 must be > 0"),
        (["--max-seconds", "nan"], "--max-seconds: nan must be > 0"),
        (["--stall-timeout-s", "-1"], "--stall-timeout-s: -1.0 must be > 0"),
        (["--gpus-per-worker", "-1"], "--gpus-per-worker: -1.0 must be >= 0"),
        (["--tokenizer", "collections:OrderedDict"], "must define encode(self, audios)"),
        (["--tokenizer", "no_such_package.codec:Tokenizer"], "no module named 'no_such_package'"),
        (["--tokenizer", "collections:nothing"], "has no attribute 'nothing'"),
        (["--set", "model.max_model_len=zero"], "model.max_model_len"),
    ],
)
def test_a_bad_option_is_one_line_naming_it(tmp_path, capsys, extra, expected):
    line = _run(tmp_path, capsys, GOOD, extra=extra)
    assert line.startswith("error: ") and expected in line


def test_a_policy_whose_tokenizer_lacks_the_speech_tokens_is_one_line(tmp_path, capsys):
    """(Checked with the tokenizer, before any cluster starts.)"""
    model = tmp_path / "text_lm"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qwen2", "vocab_size": 10}))
    train = tmp_path / "train.jsonl"
    train.write_text(GOOD)
    sets = ["--set", f"model.path={model}", "--set", f'data.train_files=["{train}"]']
    line = _run(tmp_path, capsys, GOOD, extra=sets)
    layout_error = "model.layout.speech_token_format: token '<|audio_0|>' is not in the tokenizer"
    assert line == f"error: model.path: {model}: {layout_error}"


def test_rows_that_keep_coming_pass_through_in_order():
    assert list(within_stall_deadline(iter(range(200)), 5.0, "preparation")) == list(range(200))


def test_a_source_that_stalls_ends_with_an_error_naming_the_option():
    def stalls():
        yield 1
        time.sleep(30)  # a worker that never gets its CPU
        yield 2

    rows = within_stall_deadline(stalls(), 0.3, "preparation")
    assert next(rows) == 1
    with pytest.raises(PrepareError, match=r"preparation: no row for 0.3 s \(--stall-timeout-s\)"):
        next(rows)


def test_an_error_of_the_source_reaches_the_reader():
    def fails():
        yield 1
        raise RuntimeError("the dataset failed")

    with pytest.raises(RuntimeError, match="the dataset failed"):
        list(within_stall_deadline(fails(), 5.0, "preparation"))


def test_a_reader_that_stops_early_stops_the_source():
    pulled = []

    def endless():
        for n in range(10**9):
            pulled.append(n)
            yield n

    rows = within_stall_deadline(endless(), 5.0, "codebook")
    assert [next(rows) for _ in range(3)] == [0, 1, 2]
    rows.close()
    time.sleep(1.0)
    seen = len(pulled)
    time.sleep(1.0)
    assert len(pulled) == seen < 200  # the thread stopped handing rows over


def test_a_cluster_address_nothing_answers_at_is_one_line(tmp_path, capsys):
    from wavalign.ports import free_port

    address = f"127.0.0.1:{free_port()}"
    line = _run(tmp_path, capsys, GOOD, extra=["--address", address])
    assert line == (
        f"error: --address {address}: no Ray cluster answers at {address} (Connection refused); "
        "start one there (`ray start --head`), or name none for a local cluster"
    )


@pytest.mark.parametrize("address", ["auto", "local", "ray://", "http://127.0.0.1:8265/x", "no-port"])
def test_addresses_ray_resolves_itself_are_not_probed(address):
    from wavalign.ports import unreachable

    assert unreachable(address, "--address") is None
