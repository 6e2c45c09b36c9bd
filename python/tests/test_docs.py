"""The examples of docs/python.md run as written (from the repository root, as the page says)."""

import doctest
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_python_page_examples_run():
    if not (ROOT / "bench/tables/data/sp500.csv").exists():
        pytest.skip("no bench/tables/data/sp500.csv (bash bench/tables/fetch.sh)")
    here = os.getcwd()
    os.chdir(ROOT)
    try:
        result = doctest.testfile(str(ROOT / "docs/python.md"), module_relative=False,
                                  optionflags=doctest.ELLIPSIS)
    finally:
        os.chdir(here)
    assert result.attempted >= 15 and result.failed == 0, result
