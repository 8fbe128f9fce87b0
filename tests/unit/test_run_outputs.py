"""Reading a run's Parquet files while the run replaces them (the status report, the tests' polling)."""

import threading

import pyarrow as pa

from driver.outputs import read_parquet, write_parquet_atomic


def test_a_reader_sees_one_whole_version_of_a_file_being_replaced(tmp_path):
    # pq.read_table(path) failed here in about 2% of reads ("Page was smaller than expected"): it
    # took the old file's size and the new file's bytes. That ended CI's faults run once.
    path = tmp_path / "metrics.parquet"
    rows = [{"step": 0, "loss": 0.0}]
    write_parquet_atomic(path, pa.Table.from_pylist(rows))
    stop = threading.Event()

    def rewrite_forever() -> None:
        while not stop.is_set():
            rows.append({"step": len(rows), "loss": float(len(rows))})
            write_parquet_atomic(path, pa.Table.from_pylist(rows[-40:]))

    writer = threading.Thread(target=rewrite_forever)
    writer.start()
    try:
        for _ in range(1500):
            steps = [row["step"] for row in read_parquet(path).to_pylist()]
            assert steps == list(range(steps[0], steps[0] + len(steps)))
    finally:
        stop.set()
        writer.join()
