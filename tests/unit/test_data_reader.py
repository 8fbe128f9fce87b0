"""The data reader: valid rows load from JSONL and Parquet; each kind of bad row is named."""

import json

import pytest

from wavalign.data import DataError, read_rows, write_rows
from wavalign.layout import SpeechLayout


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
    assert report.rows[0].extra["source_dataset"] == "toy" and report.rows[0].rejected_token_ids is None
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
    (
        {"rejected_token_ids": [4, 12]},
        "rejected_token_ids",
        "position 1: token id 12 is outside the vocabulary [0, 10)",
    ),
    ({"rejected_token_ids": []}, "rejected_token_ids", "expected a non-empty list"),
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
        json.dumps(good_row(0))
        + "\n{not json\n"
        + json.dumps({**good_row(2), "prompt_token_ids": [99]})
        + "\n"
        + json.dumps({**good_row(3), "task_type": "asr"})
        + "\n\n"
        + json.dumps([1])
        + "\n"
    )
    with pytest.raises(DataError, match=r"row 2: field '<line>': not valid JSON"):
        read(path)
    report = read(path, skip_invalid_rows=True)
    assert [r.row_id for r in report.rows] == ["r0"]
    assert report.filtered == {"asr": 1}
    assert len(report.skipped) == 3
    assert "row 3: field 'prompt_token_ids'" in report.skipped[1] and "row 6: field '<row>'" in report.skipped[2]


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read(tmp_path / "none.jsonl")
    (tmp_path / "d.csv").write_text("x")
    with pytest.raises(DataError, match="unsupported"):
        read(tmp_path / "d.csv")


# ---------------------------------------------------------------- malformed files, as users make them

LAYOUT = SpeechLayout(speech_start=100, speech_end=200, boa_id=7, eoa_id=8, eos_id=9, pad_id=0, interleave_ratio=(2, 8))


def speech_row(i=0, **change):
    """A row whose ids follow LAYOUT: text, an audio block, text, eos."""
    return {
        **good_row(i),
        "prompt_token_ids": [1, 7, 101, 102, 8, 2],
        "reference_token_ids": [3, 4, 7, 150, 151, 8, 5, 9],
        **change,
    }


def read_speech(path, **kw):
    return read_rows(path, vocab_size=300, max_prompt_tokens=16, layout=LAYOUT, **kw)


FILE_PROBLEMS = [
    ("empty.jsonl", b"", "no rows (the file is empty)"),
    ("blank.jsonl", b"\n  \n\n", "no rows (the file is empty)"),
    ("garbage.parquet", b"PAR1 this is not parquet at all", "not a readable Parquet file"),
    ("text.parquet", b'{"a": 1}\n', "not a readable Parquet file"),
]


@pytest.mark.parametrize("name,content,expected", FILE_PROBLEMS, ids=[c[0] for c in FILE_PROBLEMS])
def test_an_unreadable_file_is_one_error_naming_it(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_speech(path)
    assert str(err.value).startswith(f"{path}: ") and expected in str(err.value)


def test_a_directory_an_empty_parquet_and_a_cut_parquet_name_the_file(tmp_path):
    folder = tmp_path / "x.jsonl"
    folder.mkdir()
    with pytest.raises(DataError, match=f"^{folder}: a directory, not a data file"):
        read_speech(folder)
    import pyarrow as pa
    import pyarrow.parquet as pq

    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.string())}), empty)
    with pytest.raises(DataError, match=f"^{empty}: no rows"):
        read_speech(empty)
    whole = tmp_path / "whole.parquet"
    write_rows([speech_row(i) for i in range(20)], whole)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(DataError, match=f"^{cut}: not a readable Parquet file"):
        read_speech(cut)


def test_a_non_utf8_line_is_one_bad_row_and_skipping_keeps_every_good_row(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps(speech_row(i)).encode() for i in range(3)]
    lines[1] = lines[1].replace(b"one plus one", b"one pl\xffus one")
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError, match=r"row 2: field '<line>': not UTF-8: byte 0xff at column \d+"):
        read_speech(path)
    report = read_speech(path, skip_invalid_rows=True)
    assert [r.row_id for r in report.rows] == ["r0", "r2"] and len(report.skipped) == 1


def test_a_byte_order_mark_is_not_part_of_the_first_row(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"".join(json.dumps(speech_row(i)).encode() + b"\r\n" for i in range(2)))
    assert [r.row_id for r in read_speech(path).rows] == ["r0", "r1"]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_rows_of_other_task_types_are_counted_by_type(tmp_path, suffix):
    path = tmp_path / f"d{suffix}"
    write_rows(
        [
            speech_row(0),
            speech_row(1, task_type="S2S"),
            speech_row(2, task_type=None),
            speech_row(3, task_type="asr"),
            speech_row(4, task_type="S2S"),
        ],
        path,
    )
    report = read_speech(path)
    assert [r.row_id for r in report.rows] == ["r0"]
    assert report.filtered == {"S2S": 2, "null": 1, "asr": 1}


def test_a_parquet_column_of_the_wrong_type_names_the_field(tmp_path):
    path = tmp_path / "typed.parquet"
    write_rows([speech_row(i, question_text=i, prompt_token_ids=str(i)) for i in range(2)], path)
    with pytest.raises(DataError, match=f"^{path}: row 1: field 'question_text': expected a string, got int"):
        read_speech(path)


LAYOUT_PROBLEMS = [
    (
        {"reference_token_ids": [3, 4, 7, 150, 8]},
        "reference_token_ids",
        "holds no eos (id 9) to end the answer: last id 8",
    ),
    (
        {"reference_token_ids": [3, 9, 7, 150, 8, 4, 5]},
        "reference_token_ids",
        "position 1: eos before the end (5 tokens after it; the turn's closing may hold at most 4)",
    ),
    (
        {"reference_token_ids": [3, 4, 9, 5, 9]},
        "reference_token_ids",
        "position 4: token 9 after eos (the turn's closing is text)",
    ),
    (
        {"reference_token_ids": [3, 4, 9, 7]},
        "reference_token_ids",
        "position 3: token 7 after eos (the turn's closing is text)",
    ),
    (
        {"reference_token_ids": [3, 7, 150, 7, 151, 8, 9]},
        "reference_token_ids",
        "position 3: begin-of-audio inside the block opened at 1",
    ),
    (
        {"reference_token_ids": [3, 150, 8, 9]},
        "reference_token_ids",
        "position 1: speech token 150 outside an audio block",
    ),
    ({"reference_token_ids": [3, 8, 9]}, "reference_token_ids", "position 1: end-of-audio with no block open"),
    (
        {"reference_token_ids": [3, 7, 150, 9]},
        "reference_token_ids",
        "the audio block opened at position 1 is never closed",
    ),
    ({"prompt_token_ids": [1, 7, 101, 2]}, "prompt_token_ids", "the audio block opened at position 1 is never closed"),
    ({"prompt_token_ids": [1, 101, 2]}, "prompt_token_ids", "position 1: speech token 101 outside an audio block"),
]


@pytest.mark.parametrize("change,field,reason", LAYOUT_PROBLEMS, ids=[r[:28] for _, _, r in LAYOUT_PROBLEMS])
def test_a_row_that_breaks_the_speech_layout_names_file_row_field_and_position(tmp_path, change, field, reason):
    path = tmp_path / "d.jsonl"
    write_rows([speech_row(0), speech_row(1, **change), speech_row(2)], path)
    with pytest.raises(DataError) as err:
        read_speech(path)
    assert str(err.value) == f"{path}: row 2: field '{field}': {reason}"
    assert [r.row_id for r in read_speech(path, skip_invalid_rows=True).rows] == ["r0", "r2"]


def test_a_reference_may_end_with_the_turns_closing_after_eos(tmp_path):
    """ChatML's answers end <|im_end|> + "\\n" (method §5.2): the closing is kept, to be trained on."""
    path = tmp_path / "d.jsonl"
    write_rows([speech_row(0, reference_token_ids=[3, 4, 7, 150, 151, 8, 5, 9, 6])], path)
    assert read_speech(path).rows[0].reference_token_ids == (3, 4, 7, 150, 151, 8, 5, 9, 6)
