"""The docs' examples run as written: every ```python block of a page, in order, in one namespace, and every
```bash block of a page, in order, in one shell, from a folder laid out like the repository root (so the example in
add-an-algorithm.md keeps working); every config key has its row in docs/configuration.md."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from locfedmix import ALGORITHMS, Algorithm, UserError, register
from locfedmix.algorithms.parts import Parallel

ROOT = Path(__file__).parent.parent
# Pages whose ```python (PAGES) or ```bash (SHELL_PAGES) blocks run as written; ```sh blocks (make run, make test)
# are shown, not run: they are what the suite itself is.
PAGES = ["docs/add-an-algorithm.md", "docs/api.md", "docs/your-model-and-data.md", "docs/architecture.md", "README.md",
         "docs/deploy.md"]
SHELL_PAGES = ["docs/quickstart.md", "docs/configuration.md", "README.md", "docs/deploy.md"]


def python_blocks(page: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (ROOT / page).read_text(), flags=re.S | re.M)


def shell_blocks(page: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", (ROOT / page).read_text(), flags=re.S | re.M)


@pytest.mark.parametrize("page", SHELL_PAGES)
def test_every_shell_block_runs(page, tmp_path):
    """`locfedmix` is this interpreter's `python -m locfedmix` on this source tree, as `.venv/bin/locfedmix` is."""
    blocks = shell_blocks(page)
    assert blocks, f"{page} has no shell example"
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "locfedmix").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m locfedmix "$@"\n')
    (bin_dir / "locfedmix").chmod(0o755)
    source = str(ROOT / "src")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    script = "set -eu\n" + "\n".join(blocks)
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def config_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            keys += config_keys(section, f"{name}.")
        else:
            keys.append(prefix + name)
    return keys


def test_every_config_key_is_documented():
    from locfedmix.config import Config, OptimizerConfig

    page = (ROOT / "docs" / "configuration.md").read_text()
    optimizer = {f"{side}_optimizer.{key}" for side in ("client", "server") for key in OptimizerConfig.model_fields}
    missing = [key for key in config_keys(Config) if key not in optimizer and f"`{key}`" not in page]
    missing += [key for key in OptimizerConfig.model_fields if f"| `{key}` |" not in page]
    assert missing == []


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
        exec(compile(block, page, "exec"), namespace)


def test_every_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in readme, page.name


@pytest.mark.parametrize("name, fragment", [("psl", "already registered"), ("Mine!", "lower-case letters")])
def test_register_refuses_a_taken_or_unusable_name(name, fragment, catalog):
    with pytest.raises(UserError, match=fragment):
        register(Algorithm(name, "a test declaration", "tests", Parallel()))
    assert ALGORITHMS["psl"].reference != "tests"
