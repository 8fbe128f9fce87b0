"""wavalign/heavy_imports.py: the collector is off during the block, back on after; what a block
that imported something built is frozen, and a block that imported nothing freezes nothing."""

from __future__ import annotations

import gc
import sys

import pytest

from wavalign.heavy_imports import collector_paused


@pytest.fixture
def fresh_module(tmp_path, monkeypatch):
    (tmp_path / "wavalign_test_heavy_module.py").write_text("TABLE = [[i] for i in range(1000)]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "wavalign_test_heavy_module"
    monkeypatch.delitem(sys.modules, "wavalign_test_heavy_module", raising=False)


def test_a_block_that_imports_freezes_what_it_built_and_turns_the_collector_back_on(fresh_module):
    frozen = gc.get_freeze_count()
    with collector_paused():
        assert not gc.isenabled()
        module = __import__(fresh_module)
    assert gc.isenabled()
    assert gc.get_freeze_count() >= frozen + len(module.TABLE)
    gc.unfreeze()  # (this test process's heap back to the collector)


def test_a_block_that_imports_nothing_new_freezes_nothing():
    import json  # noqa: F401  (imported before: the block imports nothing)

    frozen = gc.get_freeze_count()
    with collector_paused():
        import json  # noqa: F401, F811
    assert gc.isenabled() and gc.get_freeze_count() == frozen


def test_with_the_collector_already_off_it_stays_off(fresh_module):
    gc.disable()
    try:
        with collector_paused():
            __import__(fresh_module)
        assert not gc.isenabled()
    finally:
        gc.enable()
