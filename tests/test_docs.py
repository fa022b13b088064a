"""The docs' Python examples run as written: every ```python block of a page, in order, in one namespace, from a
folder laid out like the repository root (so the example in add-an-algorithm.md keeps working)."""

import re
import shutil
from pathlib import Path

import pytest

from locfedmix import ALGORITHMS, Algorithm, UserError, register
from locfedmix.algorithms.parts import Parallel

ROOT = Path(__file__).parent.parent
PAGES = ["add-an-algorithm.md", "api.md", "architecture.md"]


def python_blocks(page: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (ROOT / "docs" / page).read_text(), flags=re.S | re.M)


@pytest.fixture
def catalog():
    """The examples register algorithms; the catalog is restored so that other tests see the built-in one."""
    before = dict(ALGORITHMS)
    yield
    ALGORITHMS.clear()
    ALGORITHMS.update(before)


@pytest.mark.parametrize("page", PAGES)
def test_every_python_block_runs(page, tmp_path, monkeypatch, catalog):
    blocks = python_blocks(page)
    assert blocks, f"{page} has no python example"
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, f"docs/{page}", "exec"), namespace)


def test_every_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in readme, page.name


@pytest.mark.parametrize("name, fragment", [("psl", "already registered"), ("Mine!", "lower-case letters")])
def test_register_refuses_a_taken_or_unusable_name(name, fragment, catalog):
    with pytest.raises(UserError, match=fragment):
        register(Algorithm(name, "a test declaration", "tests", Parallel()))
    assert ALGORITHMS["psl"].reference != "tests"
