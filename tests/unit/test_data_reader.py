"""The data reader: valid rows load from JSONL and Parquet; each kind of bad row is named."""

import json

import pytest

from wavalign.data import DataError, read_rows, write_rows


def good_row(i=0):
    return {
        "id": f"r{i}",
        "task_type": "s2s",
        "messages": [{"role": "system", "content": "hi"}, {"role": "user", "content": "<|audio|>"}],
        "question_text": "what is one plus one",
        "sft_target_text": "one plus one is two",
        "answer": 2,
        "prompt_token_ids": [1, 2, 3],
        "reference_token_ids": [4, 5, 6],
        "source_dataset": "toy",
    }


def read(path, **kw):
    return read_rows(path, vocab_size=10, max_prompt_tokens=4, **kw)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_round_trip(tmp_path, suffix):
    path = tmp_path / f"d{suffix}"
    write_rows([good_row(0), good_row(1)], path)
    report = read(path)
    assert [r.row_id for r in report.rows] == ["r0", "r1"]
    assert report.rows[0].prompt_token_ids == (1, 2, 3) and report.rows[0].answer == 2
    assert report.rows[0].extra["source_dataset"] == "toy"
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temporary file


BAD_ROWS = [
    ({"messages": None}, "messages", "missing"),
    ({"question_text": None}, "question_text", "missing"),
    ({"sft_target_text": 3}, "sft_target_text", "expected a string"),
    ({"prompt_token_ids": None}, "prompt_token_ids", "missing"),
    ({"reference_token_ids": None}, "reference_token_ids", "missing"),
    ({"prompt_token_ids": [1, 10]}, "prompt_token_ids", "position 1: token id 10 is outside the vocabulary [0, 10)"),
    ({"reference_token_ids": [-1]}, "reference_token_ids", "token id -1 is outside the vocabulary"),
    ({"prompt_token_ids": [1, "a"]}, "prompt_token_ids", "position 1: 'a' is not an integer token id"),
    ({"prompt_token_ids": [1, 2, 3, 4, 5]}, "prompt_token_ids", "5 tokens exceed data.max_prompt_tokens (4)"),
    ({"prompt_token_ids": []}, "prompt_token_ids", "expected a non-empty list"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages", "has no user turn"),
    ({"messages": [{"role": "user"}]}, "messages", "turn 0 is not a {role, content} object"),
]


# Values that Parquet's typed columns cannot hold (a number among strings, a string among token ids):
# only a JSONL file can carry them, so they are JSONL cases only.
PARQUET_CANNOT_HOLD = {"expected a string", "position 1: 'a' is not an integer token id"}
CASES = [
    pytest.param(change, field, reason, suffix, id=f"{field}-{reason[:24]}-{suffix[1:]}")
    for change, field, reason in BAD_ROWS
    for suffix in (".jsonl", ".parquet")
    if not (suffix == ".parquet" and reason in PARQUET_CANNOT_HOLD)
]


@pytest.mark.parametrize("change,field,reason,suffix", CASES)
def test_bad_row_names_file_row_and_field(tmp_path, suffix, change, field, reason):
    path = tmp_path / f"data{suffix}"
    bad = {**good_row(1), **change}
    write_rows([good_row(0), bad, good_row(2)], path)
    with pytest.raises(DataError) as err:
        read(path)
    assert str(err.value) == f"{path}: row 2: field '{field}': " + str(err.value).split(f"field '{field}': ", 1)[1]
    assert reason in str(err.value)


def test_skip_invalid_rows_counts_and_reports(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(
        json.dumps(good_row(0)) + "\n{not json\n" + json.dumps({**good_row(2), "prompt_token_ids": [99]}) + "\n"
        + json.dumps({**good_row(3), "task_type": "asr"}) + "\n\n" + json.dumps([1]) + "\n"
    )
    with pytest.raises(DataError, match=r"row 2: field '<json>': not valid JSON"):
        read(path)
    report = read(path, skip_invalid_rows=True)
    assert [r.row_id for r in report.rows] == ["r0"]
    assert report.filtered == 1  # the asr row
    assert len(report.skipped) == 3
    assert "row 3: field 'prompt_token_ids'" in report.skipped[1] and "row 6: field '<row>'" in report.skipped[2]


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read(tmp_path / "none.jsonl")
    (tmp_path / "d.csv").write_text("x")
    with pytest.raises(DataError, match="unsupported"):
        read(tmp_path / "d.csv")
