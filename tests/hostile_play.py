"""Playing a hostile scenario (hostile_scenarios.py): its files built under a root folder, `locfedmix` run as a real
process, the tree under the root hashed before and after; and the building blocks the scenarios share."""

import contextlib
import hashlib
import math
import os
import resource
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import tomli_w

import locfedmix

COMMAND = [sys.executable, "-m", "locfedmix"]
# The processes import the locfedmix this module imported, whatever their working directory.
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(Path(locfedmix.__file__).resolve().parents[1]),
                                      *filter(None, [os.environ.get("PYTHONPATH")])])}
CONFIG = {"algorithm": "psl", "dataset": "synthetic", "n_clients": 2, "samples_per_client": 8, "rounds": 1,
          "batch_size": 4, "seed": 0}
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
TIMEOUT_S = 60
LOCK_FILE = "run.lock"
# A process reading /dev/zero into memory stops here (MemoryError) instead of taking the machine's memory.
ADDRESS_SPACE_BYTES = 2**31


@dataclass(frozen=True)
class Scenario:
    door: int  # the class
    name: str
    prepare: Callable[[Path], ContextManager[tuple[list[str], str]]]  # yields (CLI arguments, expected fragment)
    code: int = 2
    inside: str | None = None  # a folder under the root the command may change (its run directory); None: nothing


@dataclass(frozen=True)
class Outcome:
    code: int | str  # the exit code, or "timeout" for a command that hung
    stderr: str
    fragment: str
    changed: list[str]  # paths outside the run directory that changed

    def matches(self, scenario: Scenario) -> bool:
        lines = self.stderr.splitlines()
        said = lines == [] if scenario.code == 0 and not self.fragment else (
            len(lines) == 1 and self.fragment in lines[0] and "Traceback" not in self.stderr)
        return self.code == scenario.code and said and not self.changed


def tree_digest(root: Path, skip: Path | None) -> dict[str, str]:
    """Every entry under `root` except `skip`, by kind and content (a link by its target; a FIFO is never opened).
    The lock file a run makes in its own run directory before it refuses (run.lock) is not counted."""
    digest = {}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            if skip is not None and (path == skip or skip in path.parents) or name == LOCK_FILE:
                continue
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                digest[str(path)] = "link:" + os.readlink(path)
            elif stat.S_ISREG(mode):
                digest[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                digest[str(path)] = f"mode:{stat.S_IFMT(mode)}"
    return digest


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_BYTES, ADDRESS_SPACE_BYTES))


def play(scenario: Scenario, root: Path) -> Outcome:
    """Prepare the scenario under `root`, run it, and compare the tree before and after."""
    skip = root / scenario.inside if scenario.inside else None
    with scenario.prepare(root) as (argv, fragment):
        before = tree_digest(root, skip)
        try:
            done = subprocess.run([*COMMAND, *argv], cwd=root, capture_output=True, text=True, timeout=TIMEOUT_S,
                                  preexec_fn=_limited, env=ENV)
            code, err = done.returncode, done.stderr
        except subprocess.TimeoutExpired as hung:
            code, err = "timeout", (hung.stderr or b"").decode(errors="replace")
        after = tree_digest(root, skip)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    return Outcome(code, err, fragment, changed)


# --- building blocks -------------------------------------------------------------------------------------------


def write_config(path: Path, **changes) -> Path:
    path.write_text(tomli_w.dumps({**CONFIG, **changes}))
    return path


def finished_run(root: Path, **changes) -> Path:
    """A real run in root/run, made by the CLI in a process of its own."""
    config = write_config(root / "base.toml", **changes)
    subprocess.run([*COMMAND, "run", "--config", str(config), "--out", str(root / "run"), "--no-progress"],
                   check=True, capture_output=True, env=ENV)
    return root / "run"


def run_args(config: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--config", str(config), "--out", str(out), "--no-progress", *extra]


def victim(root: Path, name: str = "victim.txt") -> Path:
    """A file of the user's outside the run directory, which no run may touch."""
    path = root / name
    path.write_text("the user's own data\n")
    return path


def idx_bytes(shape: tuple[int, ...]) -> bytes:
    """An IDX file of uint8 values 0..9 (valid pixels and labels)."""
    header = bytes([0, 0, 8, len(shape)]) + b"".join(n.to_bytes(4, "big") for n in shape)
    return header + bytes(n % 10 for n in range(math.prod(shape)))


def idx_set(folder: Path) -> Path:
    """A small, valid Fashion-MNIST set of plain IDX files."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, shape in zip(IDX_NAMES, [(20, 28, 28), (20,), (10, 28, 28), (10,)]):
        (folder / name).write_bytes(idx_bytes(shape))
    return folder


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at `folder` (the tests run as root), unmounted afterwards."""
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


@contextlib.contextmanager
def holder(root: Path, out: Path) -> Iterator[subprocess.Popen]:
    """A long run writing into `out`, in a process of its own, once it has written a row; killed afterwards."""
    config = write_config(root / "long.toml", rounds=100_000, checkpoint_every=0)
    process = subprocess.Popen([*COMMAND, *run_args(config, out)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True, env=ENV)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not ((out / "metrics.csv").is_file() and len((out / "metrics.csv").read_text().splitlines()) > 1):
            assert process.poll() is None and time.monotonic() < deadline, "the holding run did not start"
            time.sleep(0.1)
        yield process
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
