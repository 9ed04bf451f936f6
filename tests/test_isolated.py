"""``run_isolated`` (export/isolated.py): the work runs in another process at a lower CPU
priority, its result and its errors come back, and a child that dies is a clear error rather than
a hung load (that its log records are logged here: tests/test_cache.py, with a real export)."""

from __future__ import annotations

import os

import pytest

from maskrt.errors import MaskrtError
from maskrt.export.isolated import NICE, run_isolated
from maskrt.model.checkpoint import read_file


def test_the_work_runs_in_a_child_at_a_lower_priority():
    assert run_isolated("a look", os.nice, 0) == os.nice(0) + NICE
    assert run_isolated("a look", os.getppid) == os.getpid()


def test_an_error_of_the_work_comes_back_as_it_was_raised(tmp_path):
    with pytest.raises(MaskrtError, match=r"nowhere\.pt: no such file"):
        run_isolated("a read", read_file, tmp_path / "nowhere.pt")


def test_a_child_that_dies_is_a_clear_error():
    with pytest.raises(MaskrtError, match="the process making an export died"):
        run_isolated("an export", os._exit, 3)
