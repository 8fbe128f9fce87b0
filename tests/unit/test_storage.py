"""Run storage (wavalign/storage.py) on a `file://` URI: the same pyarrow.fs calls as s3:// or gs://
(a staging mirror per writer, publish by temporary name and move, fetch on a fresh mirror, pruning in
the storage), against a folder of this machine; and the checkpoints written through it."""

from __future__ import annotations

import json

import pytest

from wavalign.storage import RunStore, StorageError, resolve_output_dir


@pytest.fixture
def store(tmp_path, monkeypatch) -> RunStore:
    import tempfile

    (tmp_path / "staging").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "staging"))  # the mirrors live under the temp folder

    monkeypatch.setattr(tempfile, "tempdir", None)
    (tmp_path / "bucket").mkdir()
    return RunStore(f"file://{tmp_path}/bucket/runs/r1-20260101")


def test_a_relative_output_dir_of_a_submitted_job_is_an_error_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StorageError) as err:
        resolve_output_dir("runs", submitted=True)
    assert str(err.value).startswith("run.output_dir: 'runs' is relative, and a job submitted with `ray job submit`")
    assert "--set run.output_dir=/shared/runs" in str(err.value) and "s3://bucket/runs" in str(err.value)
    assert resolve_output_dir("runs", submitted=False) == str(tmp_path / "runs")  # a local run: made absolute
    assert resolve_output_dir("s3://b/runs?scheme=http", submitted=True) == "s3://b/runs?scheme=http"


def test_published_files_are_whole_in_the_storage_and_come_back_on_a_fresh_mirror(store, tmp_path):
    stored = tmp_path / "bucket" / "runs" / "r1-20260101"
    assert store.remote and store.local != stored
    (store.local / "rollouts").mkdir(parents=True)
    (store.local / "metrics.parquet").write_bytes(b"m" * 1000)
    (store.local / "rollouts" / "step-000001.parquet").write_bytes(b"r1")
    store.publish("metrics.parquet")
    store.publish("rollouts")
    assert (stored / "metrics.parquet").read_bytes() == b"m" * 1000
    assert sorted(p.name for p in stored.rglob("*")) == ["metrics.parquet", "rollouts", "step-000001.parquet"]
    fresh = store.private("elsewhere")  # another node's mirror: empty until it fetches
    assert fresh.local != store.local and not fresh.local.exists()
    assert fresh.fetch("rollouts").joinpath("step-000001.parquet").read_bytes() == b"r1"
    assert fresh.list("rollouts") == ["step-000001.parquet"] and fresh.exists("metrics.parquet")
    with pytest.raises(FileNotFoundError, match=r"file://.*/r1-20260101/nothing\.json does not exist"):
        fresh.fetch("nothing.json")
    store.remove("rollouts/step-000001.parquet")
    assert not (stored / "rollouts" / "step-000001.parquet").exists()
    assert not (store.local / "rollouts" / "step-000001.parquet").exists()


class StandInLearners:
    """LearnerGroup's checkpoint calls, as two ranks make them: each writes its own file into a
    mirror of its own and publishes it (actors/learner.py)."""

    def save_checkpoint(self, store: RunStore, relative: str, tag: str) -> None:
        for rank in (0, 1):
            mine = store.private(f"rank{rank}")
            (mine.local / relative / tag).mkdir(parents=True, exist_ok=True)
            (mine.local / relative / tag / f"rank{rank}.pt").write_text(f"state of rank {rank}")
            mine.publish(relative)
            mine.drop_local(relative)

    def load_checkpoint(self, store: RunStore, relative: str, tag: str) -> None:
        mine = store.private("rank1")
        self.loaded = sorted(p.name for p in (mine.fetch(relative) / tag).iterdir())


def test_checkpoints_go_to_the_storage_whole_and_are_pruned_there(store, tmp_path):
    from driver.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    learners = StandInLearners()
    for step in (1, 2, 3):
        save_checkpoint(store, step, learners, {"policy_version": step}, keep=2)
    stored = tmp_path / "bucket" / "runs" / "r1-20260101" / "checkpoints"
    assert sorted(p.name for p in stored.iterdir()) == ["latest", "step-000002", "step-000003"]
    assert not (store.local / "checkpoints" / "step-000001").exists()  # pruned here too
    assert sorted(p.name for p in (stored / "step-000003" / "learner" / "state").iterdir()) == ["rank0.pt", "rank1.pt"]
    assert not list((store.local.parent).glob("*-rank*/checkpoints/*/learner"))  # the ranks' staging is gone
    resumed = RunStore(store.location)  # a fresh driver, on another node: only the storage
    import shutil

    shutil.rmtree(resumed.local)
    name = latest_checkpoint(resumed)
    assert name == "step-000003"
    state = load_checkpoint(resumed, name, learners)
    assert state["step"] == 3 and state["policy_version"] == 3
    assert learners.loaded == ["rank0.pt", "rank1.pt"]
    assert json.loads((stored / "step-000003" / "driver.json").read_text())["step"] == 3


def test_an_unreachable_storage_is_one_line(tmp_path):
    store = RunStore("hdfs://nowhere.invalid:1/runs/r1")
    with pytest.raises(StorageError, match=r"^hdfs://nowhere\.invalid:1/runs/r1: \S"):
        store.exists("config.yaml")
