"""tests/conftest.py's restore of the process environment after each test: key by key."""

from __future__ import annotations

import os

from tests.conftest import restore_environment


def test_added_changed_and_removed_variables_are_put_back():
    os.environ["WAVALIGN_TEST_CHANGED"] = "before"
    os.environ["WAVALIGN_TEST_REMOVED"] = "kept"
    before = dict(os.environ)
    os.environ["WAVALIGN_TEST_ADDED"] = "1"
    os.environ["WAVALIGN_TEST_CHANGED"] = "after"
    del os.environ["WAVALIGN_TEST_REMOVED"]
    restore_environment(before)
    assert dict(os.environ) == before
