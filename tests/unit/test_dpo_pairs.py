"""The DPO pair builder (method.md §8.1) on hand-made samples."""

import json
import subprocess
import sys
from pathlib import Path

from learner.dpo_pairs import ScoreRule, build_pairs


def cand(text, sem, para):
    return {
        "output-text": text,
        "output-audio": f"{text}.wav",
        "gemini_score": {"semantic_score": sem, "paralinguistic_score": para},
    }


SAMPLES = [
    {
        "id": "a",
        "sft_target_text": "ref-a",
        "output": {"x": cand("x", 4, 4), "y": cand("y", 1, 2), "z": cand("z", 4, 4)},
    },
    {"id": "b", "sft_target_text": "ref-b", "output": {"x": cand("x", 3, 3), "y": cand("y", 3, 2.5)}},  # gap 0.5
    {"id": "c", "output": {"x": cand("x", 5, 1), "y": {"output-text": "y", "gemini_score": {"semantic_score": "n/a"}}}},
    {"id": "d", "output": {"x": cand("x", 5, 5), "y": cand("y", 1, 1)}},
]


def test_best_vs_worst_with_gap_filter_and_ties():
    pairs = build_pairs(SAMPLES, ScoreRule("sum"), min_gap=1.0)
    assert [p["id"] for p in pairs] == ["a", "d"]  # b: gap 0.5; c: one scored candidate
    a = pairs[0]
    assert (a["chosen_key"], a["rejected_key"]) == ("x", "y")  # x and z tie at 8: the first wins
    assert (a["sft_target_text"], a["rejected_text"], a["orig_sft_target_text"]) == ("x", "y", "ref-a")
    assert (a["chosen_score"], a["rejected_score"], a["score_gap"]) == (8, 3, 5)
    assert "output" not in a


def test_score_modes_top_k_and_reference_as_chosen():
    assert [p["id"] for p in build_pairs(SAMPLES, ScoreRule("semantic"), min_gap=1.0)] == ["a", "d"]
    assert [p["id"] for p in build_pairs(SAMPLES, ScoreRule("paralinguistic"), min_gap=0.5)] == ["a", "b", "d"]
    weighted = build_pairs(SAMPLES, ScoreRule("weighted", w_sem=2.0, w_para=0.0), min_gap=1.0)
    assert weighted[0]["score_gap"] == 6  # 2 x (4 - 1)
    assert [p["id"] for p in build_pairs(SAMPLES, ScoreRule(), min_gap=1.0, top_k=1)] == ["d"]  # gap 8 beats 5
    own = build_pairs(SAMPLES, ScoreRule(), min_gap=1.0, chosen_source="sft_target")
    assert own[0]["sft_target_text"] == "ref-a" and own[0]["rejected_text"] == "y"


def test_command_line(tmp_path):
    source = tmp_path / "scored.jsonl"
    source.write_text("".join(json.dumps(s) + "\n" for s in SAMPLES))
    out = tmp_path / "pairs.jsonl"
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "learner.dpo_pairs", "--input", str(source), "--output", str(out)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "2 pairs from 4 samples (0 skipped)" in done.stdout
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["a", "d"]


def test_malformed_input_is_named_never_a_traceback(tmp_path):
    """Samples or candidates of the wrong shape are skipped (named); an unreadable file is one line."""
    root = Path(__file__).resolve().parents[2]
    bad = [
        ["not", "an object"],
        {"id": "e", "output": ["x"]},  # candidates not an object
        {
            "id": "f",
            "output": {"x": "just text", "y": cand("y", 1, 1), "z": {"gemini_score": 5}},
        },  # bad candidates dropped
        SAMPLES[3],
    ]
    source = tmp_path / "scored.jsonl"
    source.write_text("".join(json.dumps(s) + "\n" for s in bad))
    out = tmp_path / "pairs.jsonl"

    def run(path):
        return subprocess.run(
            [sys.executable, "-m", "learner.dpo_pairs", "--input", str(path), "--output", str(out)],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=60,
        )

    done = run(source)
    assert done.returncode == 0, done.stderr
    assert "1 pairs from 4 samples (2 skipped)" in done.stdout
    assert f"skipped {source}: line 1: expected an object, got list" in done.stderr
    assert "line 2: field 'output': expected an object of candidates" in done.stderr and "Traceback" not in done.stderr
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(SAMPLES[0]) + "\n{oops\n")
    done = run(broken)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and f"{broken}: line 2: not valid JSON" in lines[0], done.stderr


def test_pairs_from_a_runs_rollouts_and_their_bad_input(tmp_path, capsys):
    """--from-rollouts: each group's best vs worst by reward, the chosen response ending with eos; a
    file that is not a run's rollouts.parquet is one line (exit 2)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from learner.dpo_pairs import main

    rollouts = tmp_path / "rollouts.parquet"
    rows = [
        (1, "a", 0, 5.0, [7, 2]),
        (1, "a", 1, 1.0, [8, 8]),
        (1, "b", 0, 3.0, [9, 2]),
        (1, "b", 1, 2.9, [9]),
        (2, "a", 0, 4.0, [7]),
        (2, "a", 1, 1.0, [8, 2]),
    ]  # b: gap 0.1; step 2 a: the best lacks eos (2)
    pq.write_table(
        pa.Table.from_pylist(
            [
                dict(step=s, prompt_id=p, sample_index=i, reward=r, response_token_ids=ids, text=f"t{i}")
                for s, p, i, r, ids in rows
            ]
        ),
        rollouts,
    )
    data = tmp_path / "train.jsonl"
    data.write_text(
        "".join(json.dumps({"id": key, "reference_token_ids": [1, 2], "sft_target_text": "ref"}) + "\n" for key in "ab")
    )
    out = tmp_path / "pairs.jsonl"
    assert main(["--from-rollouts", str(rollouts), "--data", str(data), "--output", str(out), "--eos-id", "2"]) == 0
    (pair,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert (pair["id"], pair["reference_token_ids"], pair["rejected_token_ids"], pair["score_gap"]) == (
        "a@1",
        [7, 2],
        [8, 8],
        4.0,
    )
    assert pair["sft_target_text"] == "t0" and pair["orig_sft_target_text"] == "ref"
    assert "1 pairs from 3 groups (2 without a pair)" in capsys.readouterr().out
    assert main(["--from-rollouts", str(data), "--data", str(data), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {data}: not a run's rollouts.parquet"), err
