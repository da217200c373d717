"""The tiers' guard (tests/conftest.py): a unit test that starts a process of the stack or
makes a Kedro session fails, naming the marker it needs."""

from __future__ import annotations

import subprocess
import sys

import pytest
from kedro.framework.session import KedroSession

from tests.conftest import _of_the_stack


def test_the_stacks_programs_are_told_from_system_tools() -> None:
    assert _of_the_stack(sys.executable)
    assert _of_the_stack(str(sys.executable).replace("python", "kedro"))
    assert _of_the_stack("chromium")
    assert not _of_the_stack("git") and not _of_the_stack("/sbin/ldconfig")


def test_a_unit_test_cannot_start_an_interpreter() -> None:
    with pytest.raises(pytest.fail.Exception, match="mark it `process`"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)


def test_a_unit_test_cannot_make_a_session() -> None:
    with pytest.raises(pytest.fail.Exception, match="mark it `pipeline`"):
        KedroSession.create()


def test_the_workers_can_keep_a_group_of_tests_together(request: pytest.FixtureRequest) -> None:
    """`make test` runs with --dist loadgroup so that the tests sharing a module's fixtures
    (a finished run, the docs' scratch project) run on one worker, which builds them once.
    pytest-xdist 3.8 names a test's group by rewriting ``item._nodeid``; a pytest that does
    not read it back (9.2: pytest-xdist#1386) runs the suite ungrouped without a word."""
    node = request.node
    named = node.nodeid
    try:
        node._nodeid = f"{named}@probe"  # noqa: SLF001 (what pytest-xdist writes)
        assert node.nodeid == f"{named}@probe"
    finally:
        node._nodeid = named  # noqa: SLF001
