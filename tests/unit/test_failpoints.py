"""Failpoints: off without the variable; an armed point fires once per run, whichever process
reaches it first; a file written while a run goes arms points from then on."""

import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from wavalign.failpoints import ENV, FailpointError, failpoint, forwarded_env


def test_nothing_happens_without_the_variable(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    failpoint("rollout.generate")
    assert forwarded_env() == {}


def test_an_armed_point_fires_once_and_others_not_at_all(monkeypatch, tmp_path):
    spec = tmp_path / "failpoints.json"
    monkeypatch.setenv(ENV, str(spec))
    failpoint("rollout.generate")  # no file yet: nothing armed
    spec.write_text(json.dumps({"rollout.generate": "raise"}))
    failpoint("reward.score")  # not armed
    with pytest.raises(FailpointError, match="failpoint rollout.generate: injected failure"):
        failpoint("rollout.generate")
    failpoint("rollout.generate")  # fired already
    assert forwarded_env() == {ENV: str(spec)}


def test_corrupt_tells_the_caller_once(monkeypatch, tmp_path):
    spec = tmp_path / "failpoints.json"
    monkeypatch.setenv(ENV, str(spec))
    spec.write_text(json.dumps({"reward.scores": "corrupt"}))
    assert failpoint("reward.score") is False
    assert failpoint("reward.scores") is True and failpoint("reward.scores") is False


def _hit(path: str) -> None:
    os.environ[ENV] = path
    failpoint("reward.score")
    os._exit(0)  # reached only if it did not fire


def test_exit_kills_exactly_one_of_several_processes(tmp_path):
    spec = tmp_path / "failpoints.json"
    spec.write_text(json.dumps({"reward.score": "exit"}))
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_hit, args=(str(spec),)) for _ in range(4)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(30)
    assert sorted(p.exitcode for p in processes) == [0, 0, 0, 17]


def test_pause_holds_the_process_at_the_point_until_resumed(tmp_path):
    spec = tmp_path / "failpoints.json"
    spec.write_text(json.dumps({"driver.learning": "pause"}))
    fired, resume = Path(f"{spec}.driver.learning.fired"), Path(f"{spec}.driver.learning.resume")
    hit = multiprocessing.get_context("fork").Process(target=_pass, args=(str(spec), "driver.learning"))
    hit.start()
    deadline = time.monotonic() + 30
    while not (fired.exists() and fired.read_text()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fired.read_text() == str(hit.pid)  # who paused: the process a test may now kill
    hit.join(0.5)
    assert hit.is_alive()  # held there
    resume.touch()
    hit.join(30)
    assert hit.exitcode == 0


def _pass(path: str, point: str) -> None:
    os.environ[ENV] = path
    failpoint(point)
    os._exit(0)


def test_an_unknown_action_names_the_point(monkeypatch, tmp_path):
    spec = tmp_path / "failpoints.json"
    spec.write_text(json.dumps({"driver.step_done": "explode"}))
    monkeypatch.setenv(ENV, str(spec))
    with pytest.raises(FailpointError, match=r"driver.step_done: unknown action 'explode'"):
        failpoint("driver.step_done")


@pytest.mark.parametrize(
    "content,reason", [("{not json", "not a readable JSON file"), ("[1, 2]", "expected a JSON object")]
)
def test_a_bad_failpoint_file_is_an_error_naming_it(monkeypatch, tmp_path, content, reason):
    spec = tmp_path / "failpoints.json"
    spec.write_text(content)
    monkeypatch.setenv(ENV, str(spec))
    with pytest.raises(FailpointError, match=rf"{ENV}: {spec}: {reason}"):
        failpoint("rollout.generate")
