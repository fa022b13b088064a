"""Hostile scenarios around a run (issue #26, classes 1-8), shared by tests/test_hostile_files.py and
benchmarks/reliability.py. Each builds real files under a root folder and runs `locfedmix` as a real process; it
must end with its exit code and (unless it succeeds) one line on stderr holding its fragment, and leave everything
under the root outside its run directory exactly as it was: the tree is hashed before and after."""

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


# --- the scenarios, by class ------------------------------------------------------------------------------------
SCENARIOS: list[Scenario] = []


def scenario(door: int, code: int = 2, inside: str | None = None):
    """Register a prepare function (a generator yielding the CLI arguments and the expected fragment)."""
    def register(prepare):
        SCENARIOS.append(Scenario(door, prepare.__name__, contextlib.contextmanager(prepare), code, inside))
        return prepare
    return register


@scenario(1)
def out_is_a_folder_of_the_users(root):
    out = root / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    (out / "checkpoint.pt").write_bytes(b"my own file that happens to have this name")
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "mine.txt").write_text("mine\n")
    yield run_args(write_config(root / "c.toml"), out), "holds no locfedmix run"


@scenario(1)
def metrics_csv_links_out_of_the_run(root):
    out = finished_run(root)
    (out / "metrics.csv").unlink()
    (out / "metrics.csv").symlink_to(victim(root))
    yield run_args(root / "base.toml", out, "--overwrite"), "symbolic link"


@scenario(1)
def events_jsonl_links_out_of_a_resumed_run(root):
    out = finished_run(root)
    (out / "events.jsonl").unlink()
    (out / "events.jsonl").symlink_to(victim(root))
    yield ["run", "--resume", str(out), "--no-progress"], "symbolic link"


@scenario(1)
def checkpoint_tmp_links_out_of_a_resumed_run(root):
    out = finished_run(root, rounds=1)
    (out / "checkpoint.pt.tmp").symlink_to(victim(root))
    config = (out / "config.toml").read_text().replace("rounds = 1", "rounds = 2")
    (out / "config.toml").write_text(config)
    yield ["run", "--resume", str(out), "--no-progress"], "symbolic link"


@scenario(1)
def tensorboard_links_out_of_the_run(root):
    out = finished_run(root)
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "kept.txt").write_text("mine\n")
    (out / "tensorboard").symlink_to(root / "elsewhere")
    yield run_args(root / "base.toml", out, "--overwrite", "--set", "log.tensorboard=true"), "symbolic link"


@scenario(2, inside="run")
def a_second_resume_while_a_run_holds_the_folder(root):
    with holder(root, root / "run") as process:
        yield ["run", "--resume", str(root / "run"), "--no-progress"], f"(pid {process.pid})"


@scenario(2, inside="run")
def a_second_overwrite_while_a_run_holds_the_folder(root):
    with holder(root, root / "run") as process:
        yield run_args(write_config(root / "c.toml"), root / "run", "--overwrite"), f"(pid {process.pid})"


@scenario(3, code=0, inside="run")
def a_sweep_label_climbing_out_of_out(root):
    config = write_config(root / "c.toml", sweep={"data.dir": ["../escaped", "../../escaped"]})
    yield run_args(config, root / "run"), ""


@scenario(3, code=0, inside="run")
def a_sweep_label_that_is_an_absolute_path(root):
    config = write_config(root / "c.toml", sweep={"data.dir": [str(root / "absolute")]})
    yield run_args(config, root / "run"), ""


@scenario(3)
def two_sweep_labels_for_one_folder(root):
    config = write_config(root / "c.toml", sweep={"data.dir": ["a/b", "a_b"]})
    yield run_args(config, root / "run"), "would share the run directory"


@scenario(4)
def a_config_that_is_a_fifo(root):
    os.mkfifo(root / "c.toml")
    yield run_args(root / "c.toml", root / "run"), "is a FIFO"


@scenario(4)
def a_config_that_is_dev_zero(root):
    (root / "c.toml").symlink_to("/dev/zero")
    yield run_args(root / "c.toml", root / "run"), "is a character device"


@scenario(4)
def a_resumed_config_toml_that_is_a_fifo(root):
    out = finished_run(root)
    (out / "config.toml").unlink()
    os.mkfifo(out / "config.toml")
    yield ["run", "--resume", str(out), "--no-progress"], "is a FIFO"


@scenario(4)
def a_summary_json_that_is_a_fifo_in_report(root):
    out = finished_run(root)
    (out / "summary.json").unlink()
    os.mkfifo(out / "summary.json")
    yield ["report", str(out), "--out", str(root / "report")], "is a FIFO"


@scenario(4)
def a_summary_json_of_the_wrong_shape_in_report(root):
    out = finished_run(root)
    (out / "summary.json").write_text("[1, 2, 3]\n")
    yield ["report", str(out), "--out", str(root / "report")], str(out / "summary.json")


@scenario(4)
def a_metrics_csv_missing_a_column_in_report(root):
    out = finished_run(root)
    lines = (out / "metrics.csv").read_text().replace("test_accuracy", "accuracy")
    (out / "metrics.csv").write_text(lines)
    yield ["report", str(out), "--out", str(root / "report")], str(out / "metrics.csv")


@scenario(5)
def a_named_data_folder_missing_a_file(root):
    folder = idx_set(root / "fm")
    (folder / IDX_NAMES[3]).unlink()
    config = write_config(root / "c.toml", dataset="fashion-mnist", data={"dir": str(folder)})
    yield run_args(config, root / "run"), str(folder / IDX_NAMES[3])


@scenario(5)
def a_named_data_file_that_is_a_fifo(root):
    folder = idx_set(root / "fm")
    (folder / IDX_NAMES[1]).unlink()
    os.mkfifo(folder / IDX_NAMES[1])
    config = write_config(root / "c.toml", dataset="fashion-mnist", data={"dir": str(folder)})
    yield run_args(config, root / "run"), str(folder / IDX_NAMES[1])


@scenario(6)
def a_resume_after_the_learning_rate_changed(root):
    out = finished_run(root)
    config = (out / "config.toml").read_text().replace("rounds = 1", "rounds = 2").replace("lr = 0.001", "lr = 0.01", 1)
    (out / "config.toml").write_text(config)
    yield ["run", "--resume", str(out), "--no-progress"], "client_optimizer.lr (0.001 → 0.01)"


@scenario(6)
def a_resume_after_the_dataset_changed(root):
    out = finished_run(root)
    config = (out / "config.toml").read_text().replace('dataset = "synthetic"', 'dataset = "digits"')
    (out / "config.toml").write_text(config)
    yield ["run", "--resume", str(out), "--no-progress"], "dataset ('synthetic' → 'digits')"


@scenario(6)
def a_resume_that_lowers_rounds(root):
    out = finished_run(root, rounds=2)
    (out / "config.toml").write_text((out / "config.toml").read_text().replace("rounds = 2", "rounds = 1"))
    yield ["run", "--resume", str(out), "--no-progress"], "lowers rounds from 2 to 1"


@scenario(7)
def a_boolean_where_an_integer_is_meant(root):
    yield run_args(write_config(root / "c.toml", rounds=True), root / "run"), "rounds=True"


@scenario(7)
def a_string_where_a_number_is_meant(root):
    yield run_args(write_config(root / "c.toml", batch_size="4"), root / "run"), "batch_size='4'"


@scenario(7)
def an_infinite_learning_rate(root):
    config = write_config(root / "c.toml", client_optimizer={"lr": float("inf")})
    yield run_args(config, root / "run"), "client_optimizer.lr=inf"


@scenario(7, code=3, inside="run")
def a_numerical_fault_before_any_checkpoint(root):
    config = write_config(root / "c.toml", checkpoint_every=0, client_optimizer={"name": "sgd", "lr": 1e30},
                          server_optimizer={"name": "sgd", "lr": 1e30})
    yield run_args(config, root / "run"), "no checkpoint had been written"


@scenario(7, code=0, inside="run")
def a_run_in_which_nothing_trained(root):
    config = write_config(root / "c.toml", participation={"deadline_s": 1e-9})
    yield run_args(config, root / "run"), "warning: no step trained any model"


@scenario(8)
def out_is_a_file(root):
    victim(root, "run")
    yield run_args(write_config(root / "c.toml"), root / "run"), "is not a directory"


@scenario(8)
def out_on_a_read_only_filesystem(root):
    config = write_config(root / "c.toml")
    with mounted_tmpfs(root / "ro", "1m") as folder:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        yield run_args(config, folder / "run"), "Read-only file system"


@scenario(8, code=4, inside="disk")
def a_disk_that_fills_during_the_run(root):
    size = (finished_run(root) / "checkpoint.pt").stat().st_size
    config = write_config(root / "c.toml", rounds=3)
    # Room for the logs and one checkpoint, not for the next one's temporary copy beside it.
    pages = 8 + -(-size * 3 // 2) // 4096
    with mounted_tmpfs(root / "disk", f"{pages * 4096}") as folder:
        yield run_args(config, folder / "run"), "No space left on device; the last checkpoint"
