"""Hostile scenarios around a run (issue #26, classes 1-8), shared by tests/test_hostile_files.py and
benchmarks/reliability.py. Each builds real files under a root folder and runs `locfedmix` as a real process; it
must end with its exit code and (unless it succeeds) one line on stderr holding its fragment, and leave everything
under the root outside its run directory exactly as it was: the tree is hashed before and after (hostile_play.py)."""

import contextlib
import os
import subprocess

from hostile_play import (IDX_NAMES, Scenario, finished_run, holder, idx_set, mounted_tmpfs, run_args, victim,
                          write_config)

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
