"""How `pytest -n 2` hands out the suite: whole work units (a module, or the modules that share a
session fixture) to one worker each, in collection order, so that a unit's fixtures are set up once.
Kept apart from tests/conftest.py so that tests/unit/test_scheduling.py can run it on a suite of its
own."""

from __future__ import annotations

from collections.abc import Callable

from xdist.scheduler import LoadScopeScheduling


class UnitScheduling(LoadScopeScheduling):
    """pytest-xdist's scope scheduling with `unit_of(nodeid)` as the scope, in collection order."""

    def __init__(self, config, log, unit_of: Callable[[str], str]) -> None:
        config.option.loadscopereorder = False  # the units in collection order (pytest_collection_modifyitems)
        super().__init__(config, log)
        self.unit_of = unit_of

    def _split_scope(self, nodeid: str) -> str:
        return self.unit_of(nodeid)

    def remove_node(self, node):
        """A crashed worker's finished units are not queued again. xdist 3.8 requeues every unit the
        worker ever had; a worker handed a finished one gets no test and waits for work that never
        comes, and the whole session hung after one worker crash (seen: a SIGSEGV in a worker)."""
        workload = self.assigned_work.get(node, {})
        for unit in [unit for unit, tests in workload.items() if all(tests.values())]:
            del workload[unit]
        return super().remove_node(node)
