"""RunOutputs: what a run leaves in its directory, each file written atomically.

- metrics.parquet: one row per step (rewritten whole after every step: it is small);
- rollouts/step-NNNNNN.parquet: one file per step, one row per sampled response; rollouts.parquet
  is their concatenation, refreshed at every checkpoint and at the end of the run;
- tensorboard/: event files with every numeric step metric.

On resume, everything after the checkpoint's step is dropped first, so the continued run writes
exactly the rows an uninterrupted run would have. Each file goes to the run's storage
(wavalign/storage.py) as soon as it is written; TensorBoard's event files, which grow, at each
checkpoint and at the end.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from driver.step_metrics import finite_numbers
from wavalign.atomic import atomic_path
from wavalign.storage import RunStore

_PART = re.compile(r"^step-(\d{6})\.parquet$")


def write_parquet_atomic(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_parquet(path: Path) -> pa.Table:
    """The table in a file that a running job may replace (write_parquet_atomic) at any moment.

    pq.read_table(path) looks the file up twice, once for its size and once to read it, so a
    replacement in between reads the new file's bytes with the old size: a corrupt page. One open
    file holds one version."""
    with open(path, "rb") as file:
        return pq.read_table(file)


class RunOutputs:
    def __init__(self, store: RunStore, resume_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.store, self.run_dir = store, store.local
        self.metrics_path = self.run_dir / "metrics.parquet"
        self.rollouts_dir = self.run_dir / "rollouts"
        self.rollouts_dir.mkdir(parents=True, exist_ok=True)
        self.metrics: list[dict] = []
        if resume_step is not None:
            self._truncate(resume_step)
        # purge_step drops events a killed run wrote after its checkpoint
        self.tensorboard = SummaryWriter(
            str(self.run_dir / "tensorboard"), purge_step=None if resume_step is None else resume_step + 1
        )

    def _truncate(self, step: int) -> None:
        for stored in ("metrics.parquet", "rollouts", "tensorboard"):
            if self.store.exists(stored):
                self.store.fetch(stored)  # a fresh node's mirror holds nothing yet
        if self.metrics_path.exists():
            self.metrics = [row for row in read_parquet(self.metrics_path).to_pylist() if row["step"] <= step]
            write_parquet_atomic(self.metrics_path, _table(self.metrics))
            self.store.publish("metrics.parquet")
        for part in self._parts():
            if int(_PART.match(part.name)[1]) > step:
                self.store.remove(f"rollouts/{part.name}")

    def _parts(self) -> list[Path]:
        return sorted(p for p in self.rollouts_dir.iterdir() if _PART.match(p.name))

    def add_step(self, metrics: dict, rollouts: Sequence[dict]) -> None:
        """The step's rollouts first, then its metrics row: a metrics row implies its rollouts exist."""
        step = int(metrics["step"])
        part = f"rollouts/step-{step:06d}.parquet"
        write_parquet_atomic(self.run_dir / part, pa.Table.from_pylist(list(rollouts)))
        self.store.publish(part)
        self.metrics.append(metrics)
        write_parquet_atomic(self.metrics_path, _table(self.metrics))
        self.store.publish("metrics.parquet")
        for key, value in finite_numbers(metrics).items():
            if key != "step":
                self.tensorboard.add_scalar(key, value, global_step=step)
        self.tensorboard.flush()

    def merge_rollouts(self) -> Path:
        """rollouts.parquet = every step's rollouts, in step order."""
        tables = [pq.read_table(part) for part in self._parts()]
        target = self.run_dir / "rollouts.parquet"
        if tables:
            write_parquet_atomic(target, pa.concat_tables(tables, promote_options="default"))
            self.store.publish("rollouts.parquet")
        self.store.publish("tensorboard")
        return target

    def close(self) -> None:
        self.tensorboard.close()
        self.store.publish("tensorboard")


def _table(rows: list[dict]) -> pa.Table:
    """Rows may differ in keys (e.g. evaluation metrics every N steps): missing values are null."""
    keys = list(dict.fromkeys(key for row in rows for key in row))
    return pa.Table.from_pylist([{key: row.get(key) for key in keys} for row in rows])
