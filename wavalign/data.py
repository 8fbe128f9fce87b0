"""Reading and writing prompt data (JSONL or Parquet) with the WavAlign fields (method.md §9).

Each row needs `messages`, `question_text`, `sft_target_text`, and token ids: `prompt_token_ids` (the
full prompt, chat template and user speech included, ending with the generation prompt) and
`reference_token_ids` (the reference assistant answer, interleaved text + speech, ending with eos
and the turn's closing after it if the chat format has one, e.g. ChatML's "\n": method §5.2).
Optional: `id`, `task_type` (rows of other types are dropped; absent means s2s), `answer` (for a
verifiable reward), `rejected_token_ids` (offline DPO: the dispreferred response, token ids in the
vocabulary; a sampled response may stop anywhere), and anything else, carried through untouched.

A bad row is an error naming file, row (1-based) and field — or, with `skip_invalid_rows`, a counted
skip listed in the report that keeps every good row (a JSONL line that is not UTF-8 or not JSON is
one bad row, not a bad file). With the model's speech layout, token ids must also follow it: the
reference holds exactly one eos, followed by at most MAX_CLOSING_TOKENS text tokens (the turn's
closing, trained as labels too), audio blocks open and close in turn, and speech codes sit inside
them. A file that cannot be read at all (missing, a directory, an unknown suffix, corrupt Parquet,
no rows) is a DataError naming the file. Rows whose `task_type` is not selected are
counted, by type. A UTF-8 byte-order mark is read as nothing. pyarrow is imported only where
Parquet is read or written.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wavalign.atomic import atomic_path
from wavalign.layout import SpeechLayout

MAX_CLOSING_TOKENS = 4  # tokens after eos in a reference: the chat format's end of turn (ChatML: "\n")
REQUIRED_FIELDS = ("messages", "question_text", "sft_target_text", "prompt_token_ids", "reference_token_ids")


class DataError(ValueError):
    """A data row that cannot be used; the message names file, row and field."""


@dataclass(frozen=True)
class PromptRow:
    """A validated prompt with its reference answer."""

    row_id: str
    prompt_token_ids: tuple[int, ...]
    reference_token_ids: tuple[int, ...]
    question_text: str
    sft_target_text: str
    answer: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    # DPO pairs (algorithm.dpo_pairs: offline): the dispreferred response; the reference is the chosen
    rejected_token_ids: tuple[int, ...] | None = None


@dataclass
class ReadReport:
    rows: list[PromptRow]
    skipped: list[str]  # one message per invalid row skipped under skip_invalid_rows
    filtered: dict[str, int] = field(default_factory=dict)  # rows left out for their task_type, by type


def read_rows(
    path: str | Path,
    *,
    vocab_size: int,
    max_prompt_tokens: int,
    skip_invalid_rows: bool = False,
    task_types: Sequence[str] = ("s2s",),
    layout: SpeechLayout | None = None,
) -> ReadReport:
    """Read and validate every row of a .jsonl or .parquet file (against `layout` when given)."""
    path = Path(path)
    report = ReadReport(rows=[], skipped=[])
    seen = 0
    for row_number, record in _records(path):
        seen += 1
        try:
            if isinstance(record, dict) and (kind := record.get("task_type", "s2s")) not in task_types:
                key = kind if isinstance(kind, str) else json.dumps(kind)
                report.filtered[key] = report.filtered.get(key, 0) + 1
                continue
            row = _validate(record, f"{path.name}:{row_number}", vocab_size, max_prompt_tokens)
            if layout is not None:
                _check_layout(row, layout)
            report.rows.append(row)
        except _RowProblem as problem:
            message = f"{path}: row {row_number}: field '{problem.field}': {problem.reason}"
            if not skip_invalid_rows:
                raise DataError(message) from None
            report.skipped.append(message)
    if not seen:
        raise DataError(f"{path}: no rows (the file is empty)")
    return report


def write_rows(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Write rows atomically as JSONL or Parquet, chosen by the file suffix."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".jsonl":
            tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        elif path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            # every field of every row (pyarrow would take the columns from the first row alone)
            fields = dict.fromkeys(key for row in rows for key in row)
            pq.write_table(pa.Table.from_pylist([{key: row.get(key) for key in fields} for row in rows]), tmp)
        else:
            raise DataError(f"{path}: unsupported data file type (use .jsonl or .parquet)")


def raw_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """(row id, record as stored) of every row of a data file, unvalidated: the ids the reader gives
    its rows (the row's `id`, else file:row), for tools that rewrite rows."""
    path = Path(path)
    for number, record in _records(path):
        if isinstance(record, dict):
            yield _row_id(record, f"{path.name}:{number}"), record


def _row_id(record: dict[str, Any], default_id: str) -> str:
    return str(record.get("id") or default_id)


class _RowProblem(Exception):
    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field, self.reason = field_name, reason


def _records(path: Path) -> Iterator[tuple[int, Any]]:
    if not path.exists():
        raise DataError(f"{path}: data file not found")
    if path.is_dir():
        raise DataError(f"{path}: a directory, not a data file (list its files in data.train_files / eval_files)")
    if path.suffix == ".jsonl":
        try:
            content = path.read_bytes()
        except OSError as err:
            raise DataError(f"{path}: cannot read ({err.strerror})") from None
        for number, line in enumerate(content.removeprefix(b"\xef\xbb\xbf").splitlines(), 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as err:
                yield number, _Unparsable(f"not UTF-8: byte {line[err.start]:#04x} at column {err.start + 1}")
            except json.JSONDecodeError as err:
                yield number, _Unparsable(f"not valid JSON ({err})")
    elif path.suffix == ".parquet":
        for number, record in enumerate(_parquet_records(path), 1):
            yield number, record
    else:
        raise DataError(f"{path}: unsupported data file type (use .jsonl or .parquet)")


def _parquet_records(path: Path) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({' '.join(str(err).split())[:200]})") from None


@dataclass(frozen=True)
class _Unparsable:
    error: str


def _validate(record: Any, default_id: str, vocab_size: int, max_prompt_tokens: int) -> PromptRow:
    if isinstance(record, _Unparsable):
        raise _RowProblem("<line>", record.error)
    if not isinstance(record, dict):
        raise _RowProblem("<row>", f"expected an object, got {type(record).__name__}")
    for name in REQUIRED_FIELDS:
        if record.get(name) is None:
            raise _RowProblem(name, "missing")
    _check_messages(record["messages"])
    for name in ("question_text", "sft_target_text"):
        if not isinstance(record[name], str):
            raise _RowProblem(name, f"expected a string, got {type(record[name]).__name__}")
    prompt = _token_ids(record, "prompt_token_ids", vocab_size)
    if len(prompt) > max_prompt_tokens:
        raise _RowProblem(
            "prompt_token_ids", f"{len(prompt)} tokens exceed data.max_prompt_tokens ({max_prompt_tokens})"
        )
    known = {"id", "answer", "rejected_token_ids", *REQUIRED_FIELDS}
    rejected = (
        _token_ids(record, "rejected_token_ids", vocab_size) if record.get("rejected_token_ids") is not None else None
    )
    return PromptRow(
        row_id=_row_id(record, default_id),
        prompt_token_ids=prompt,
        reference_token_ids=_token_ids(record, "reference_token_ids", vocab_size),
        question_text=record["question_text"],
        sft_target_text=record["sft_target_text"],
        answer=record.get("answer"),
        extra={k: v for k, v in record.items() if k not in known},
        rejected_token_ids=rejected,
    )


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise _RowProblem("messages", "expected a non-empty list of {role, content} turns")
    for i, turn in enumerate(messages):
        if (
            not isinstance(turn, dict)
            or not isinstance(turn.get("role"), str)
            or not isinstance(turn.get("content"), str)
        ):
            raise _RowProblem("messages", f"turn {i} is not a {{role, content}} object of strings")
    if not any(turn["role"] == "user" for turn in messages):
        raise _RowProblem("messages", "has no user turn")


def _token_ids(record: dict[str, Any], name: str, vocab_size: int) -> tuple[int, ...]:
    ids = record[name]
    if not isinstance(ids, list) or not ids:
        raise _RowProblem(name, "expected a non-empty list of token ids")
    for position, token in enumerate(ids):
        if not isinstance(token, int) or isinstance(token, bool):
            raise _RowProblem(name, f"position {position}: {token!r} is not an integer token id")
        if not 0 <= token < vocab_size:
            raise _RowProblem(
                name, f"position {position}: token id {token} is outside the vocabulary [0, {vocab_size})"
            )
    return tuple(ids)


def _check_layout(row: PromptRow, layout: SpeechLayout) -> None:
    """The row's token ids follow the speech layout (see the module docstring)."""
    reference, name = row.reference_token_ids, "reference_token_ids"
    if layout.eos_id not in reference:
        raise _RowProblem(name, f"holds no eos (id {layout.eos_id}) to end the answer: last id {reference[-1]}")
    end = reference.index(layout.eos_id)
    closing = reference[end + 1 :]
    if len(closing) > MAX_CLOSING_TOKENS:
        raise _RowProblem(
            name,
            f"position {end}: eos before the end ({len(closing)} tokens after it; the turn's closing "
            f"may hold at most {MAX_CLOSING_TOKENS})",
        )
    for position, token in enumerate(closing, start=end + 1):
        if token == layout.eos_id or layout.is_speech_code(token) or layout.is_boundary(token):
            raise _RowProblem(name, f"position {position}: token {token} after eos (the turn's closing is text)")
    for name, ids in (("prompt_token_ids", row.prompt_token_ids), ("reference_token_ids", reference)):
        _check_audio_blocks(name, ids, layout)


def _check_audio_blocks(name: str, ids: Sequence[int], layout: SpeechLayout) -> None:
    opened: int | None = None  # where the open audio block began
    for position, token in enumerate(ids):
        if token == layout.boa_id:
            if opened is not None:
                raise _RowProblem(name, f"position {position}: begin-of-audio inside the block opened at {opened}")
            opened = position
        elif token == layout.eoa_id:
            if opened is None:
                raise _RowProblem(name, f"position {position}: end-of-audio with no block open")
            opened = None
        elif layout.is_speech_code(token) and opened is None:
            raise _RowProblem(name, f"position {position}: speech token {token} outside an audio block")
    if opened is not None:
        raise _RowProblem(name, f"the audio block opened at position {opened} is never closed")
