"""What a config file and its --set overrides run: an explicit --set beats the [sweep] on its key, `make run` keeps
its seven-algorithm comparison, sweep cells leave out the settings that do not apply to them, the progress bar and
`locfedmix latency` say what they show."""

import csv
import fcntl
import os
import pty
import re
import shlex
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from locfedmix.algorithms.catalog import ALGORITHMS
from locfedmix.cli import main
from locfedmix.errors import UserError
from locfedmix.experiment import plan_experiment

ROOT = Path(__file__).parent.parent
SEVEN = ["sl", "psl", "sfl", "sflv1", "sflv2", "locsplitfed", "locfedmix"]
TINY = ["dataset=digits", "n_clients=2", "samples_per_client=16", "rounds=1", "batch_size=8"]


def make_run_command() -> list[str]:
    """The `locfedmix run` arguments of the Makefile's run target."""
    recipe = (ROOT / "Makefile").read_text().split("\nrun:")[1]
    return shlex.split(re.search(r"-m locfedmix run (.*?) &&", recipe).group(1))


def set_values(words: list[str]) -> list[str]:
    """The --set values, but the dataset's, which the recipe reads from a shell variable."""
    return [words[k + 1] for k, word in enumerate(words) if word == "--set" and "$" not in words[k + 1]]


def test_make_run_still_trains_the_seven_algorithm_comparison():
    words = make_run_command()
    config = words[words.index("--config") + 1]
    cells = plan_experiment(ROOT / config, [*set_values(words), "dataset=digits"])
    assert [cell.label for cell in cells] == SEVEN
    assert [cell.config.algorithm for cell in cells] == SEVEN


@pytest.mark.parametrize("config", ["default.toml", "compare.toml"])
def test_set_algorithm_trains_that_algorithm_only(config, tmp_path):
    """The README's `--set algorithm=psl` on the default config (one run) and on the comparison (its sweep yields)."""
    out = tmp_path / "out"
    args = ["run", "--config", str(ROOT / "configs" / config), "--out", str(out), "--no-progress"]
    assert main([*args, "--set", "algorithm=psl", *(a for t in TINY for a in ("--set", t))]) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert {row["algorithm"] for row in rows} == {"psl"}
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) in ([], ["tensorboard"])


def test_a_set_key_leaves_the_sweep_and_the_other_keys_stay(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('algorithm = "psl"\ndataset = "digits"\npartition = "dirichlet"\nn_clients = 2\nrounds = 1\n'
                    'batch_size = 8\n[sweep]\nalgorithm = ["sl", "psl"]\nseed = [1, 2]\n"data.alpha" = [0.1]\n')
    cells = plan_experiment(path, ["algorithm=sfl", "data={alpha=0.3}"])
    assert [(c.label, c.config.algorithm, c.config.seed, c.config.data.alpha) for c in cells] == [
        ("1", "sfl", 1, 0.3), ("2", "sfl", 2, 0.3)]  # a one-key sweep: labelled by value


def test_a_switch_some_algorithms_lack_is_left_out_of_their_cells(tmp_path):
    """Before: the whole sweep was refused because psl has no SmashMix; now psl runs as psl and says so."""
    path = tmp_path / "s.toml"
    path.write_text('algorithm = "psl"\ndataset = "digits"\nn_clients = 2\nrounds = 1\nbatch_size = 8\n'
                    '[algo]\nmix = false\n[sweep]\nalgorithm = ["psl", "locfedmix"]\n')
    psl, ours = plan_experiment(path)
    assert psl.config.algo.mix is None and psl.config.resolved_algorithm() == ALGORITHMS["psl"]
    assert "algo.mix left out" in psl.note and ours.note == ""
    assert ours.config.resolved_algorithm().mixer is None
    path.write_text(path.read_text().replace('["psl", "locfedmix"]', '["psl"]').replace("[sweep]", "[x]"))
    with pytest.raises(UserError, match="algo"):  # outside a sweep a switch that does not apply stays an error
        plan_experiment(path)


def test_swept_partitioner_parameters_apply_only_where_they_are_read(tmp_path):
    """partition × alpha: the iid cell runs once (alpha means nothing to it), the dirichlet cells once per alpha."""
    path = tmp_path / "s.toml"
    path.write_text('algorithm = "psl"\ndataset = "digits"\nn_clients = 2\nrounds = 1\nbatch_size = 8\n'
                    '[sweep]\npartition = ["iid", "dirichlet"]\n"data.alpha" = [0.1, 1.0]\n')
    cells = plan_experiment(path)
    assert [c.label for c in cells] == ["partition=iid", "partition=dirichlet-alpha=0.1",
                                        "partition=dirichlet-alpha=1.0"]
    assert "data.alpha left out" in cells[0].note and cells[0].config.data.alpha == 0.5


def test_latency_titles_each_table_by_the_config_and_what_differs(tmp_path, capsys):
    path = tmp_path / "grid.toml"
    path.write_text('algorithm = "psl"\ndataset = "synthetic"\nn_clients = 2\nrounds = 1\nbatch_size = 8\n'
                    '[sweep]\nalgorithm = ["psl", "sl"]\nn_clients = [2, 4]\n')
    assert main(["latency", "--config", str(path)]) == 0
    titles = [line for line in capsys.readouterr().out.splitlines() if "clients, batch" in line]
    assert [t.split(":")[0] for t in titles] == ["grid, n_clients=2", "grid, n_clients=4"]


def test_version_names_the_installed_package():
    result = subprocess.run([sys.executable, "-m", "locfedmix", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and re.fullmatch(r"locfedmix \S+\n", result.stdout)


def run_in_terminal(args: list[str]) -> str:
    """The command's stderr as a terminal shows it (tqdm draws only where stderr is a TTY)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))  # a new pty is 0 columns wide
    process = subprocess.Popen([sys.executable, "-m", "locfedmix", *args], stderr=follower,
                               stdout=subprocess.DEVNULL)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closes with the process
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait()
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def test_the_progress_bar_shows_cell_round_loss_accuracy_and_eta(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('algorithm = "psl"\ndataset = "digits"\nn_clients = 2\nsamples_per_client = 32\nrounds = 2\n'
                    'batch_size = 8\n[sweep]\nalgorithm = ["psl", "sl"]\n')
    shown = run_in_terminal(["run", "--config", str(path), "--out", str(tmp_path / "o")])
    assert "[1/2] psl" in shown and "[2/2] sl" in shown
    assert re.search(r"round 2/2, loss \d+\.\d{3}, test acc 0\.\d{3}", shown)
    assert re.search(r"<\d\d:\d\d", shown)  # tqdm's remaining time
    quiet = subprocess.run([sys.executable, "-m", "locfedmix", "run", "--config", str(path), "--out",
                            str(tmp_path / "q")], capture_output=True, text=True)
    assert quiet.returncode == 0 and quiet.stderr == ""
    silent = run_in_terminal(["run", "--config", str(path), "--out", str(tmp_path / "n"), "--no-progress"])
    assert "round" not in silent


def test_a_partitioner_parameter_that_is_not_read_is_refused_like_a_switch(tmp_path):
    """One rule: before, data.alpha with iid was accepted and did nothing while algo.mix with psl was refused."""
    path = tmp_path / "one.toml"
    path.write_text('algorithm = "psl"\ndataset = "digits"\nn_clients = 2\nrounds = 1\nbatch_size = 8\n'
                    '[data]\nalpha = 0.3\nval_fraction = 0.2\n')
    with pytest.raises(UserError) as info:
        plan_experiment(path)
    assert str(info.value) == ("data.alpha=0.3 is read only by partition 'dirichlet', not by partition 'iid'; "
                               "remove it or choose that partition")
    (cell,) = plan_experiment(path, ["partition=dirichlet"])
    assert cell.config.data.alpha == 0.3
    path.write_text(path.read_text().replace("alpha = 0.3", "alpha = 0.5"))  # the default, as config.toml lists it
    assert plan_experiment(path)[0].config.partition == "iid"
