"""The examples of docs/python.md run as written (from the repository root, as the page says)."""

import doctest
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_doctests(page):
    """The `>>>` examples of a Markdown page's ```python blocks, run in order in one namespace
    from the repository root."""
    text = (ROOT / page).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    test = doctest.DocTestParser().get_doctest("\n".join(blocks), {}, page, page, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    here = os.getcwd()
    os.chdir(ROOT)
    try:
        runner.run(test)
    finally:
        os.chdir(here)
    return runner.summarize(verbose=False)


def test_readme_example_runs():
    if not (ROOT / "bench/tables/data/sp500.csv").exists():
        pytest.skip("no bench/tables/data/sp500.csv (bash bench/tables/fetch.sh)")
    result = run_doctests("README.md")
    assert result.attempted >= 6 and result.failed == 0, result


def test_python_page_examples_run():
    if not (ROOT / "bench/tables/data/sp500.csv").exists():
        pytest.skip("no bench/tables/data/sp500.csv (bash bench/tables/fetch.sh)")
    result = run_doctests("docs/python.md")
    assert result.attempted >= 15 and result.failed == 0, result
