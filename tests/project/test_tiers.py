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
