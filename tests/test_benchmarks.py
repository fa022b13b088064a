"""The reproduction grid is valid cell by cell, and its report is built from finished run directories."""

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from locfedmix.algorithms.catalog import ALGORITHMS
from locfedmix.api import run
from locfedmix.config import validate
from locfedmix.report.runs import read_metrics
from locfedmix.selection import validation_selected

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import device_check  # noqa: E402
import reliability  # noqa: E402
import reproduce  # noqa: E402
from reproduction_findings import findings  # noqa: E402
from reproduction_report import load_cells, setup_note, write_report  # noqa: E402
from test_logs import events, interrupt_at  # noqa: E402


@pytest.mark.parametrize("cudnn_gap, plain_gap, identical, verdict", [
    (3.08e-3, 6.92e-5, True, True),  # the H200's sl: cuDNN's small-batch rounding alone does not fail the check
    (3.08e-3, 2e-3, True, False),  # a gap that stays with cuDNN off is ours
    (1e-7, 1e-7, False, False),  # a GPU run that does not repeat
])
def test_device_check_verdict_reads_the_gap_without_cudnn(cudnn_gap, plain_gap, identical, verdict):
    row = {"gpu_repeat_identical": identical, "gpu_vs_cpu": cudnn_gap, "gpu_without_cudnn_vs_cpu": plain_gap,
           "loop_vs_stacked_gpu": 1e-7}
    assert device_check.passes(row) is verdict


@pytest.mark.parametrize("quick", [True, False])
def test_every_cell_of_the_grid_is_a_valid_config(quick):
    grid = reproduce.experiments(quick)
    assert {"convergence", "scalability", "ablations", "noniid-convergence", "calibration"} <= set(grid)
    for cells in grid.values():
        labels = [label for label, _ in cells]
        assert len(labels) == len(set(labels))
        for _, overrides in cells:
            reproduce.cell_config(overrides, seed=0, rounds=1, settings=[])


def final_test_accuracy(run_dir: Path) -> float:
    return float(list(csv.DictReader((run_dir / "metrics.csv").open()))[-1]["test_accuracy"])


def test_report_summarizes_finished_cells(tmp_path):
    grid_dir = tmp_path / "results" / "reproduction" / "tiny"
    base = {"dataset": "synthetic", "n_clients": 2, "samples_per_client": 30, "rounds": 2, "batch_size": 10}
    cells = [("convergence", a, {"algorithm": a}) for a in ("psl", "sfl", "locfedmix")]
    cells.append(("readings", "mix-only", {"algorithm": "locfedmix", "algo": {"loc": False, "fed": False}}))
    for experiment, label, overrides in cells:
        for seed in (0, 1):
            config = validate({**base, **overrides, "seed": seed})
            run(config, grid_dir / experiment / label / f"seed{seed}", progress=False)
    report = tmp_path / "results" / "REPORT.md"
    preface = findings(lambda experiment: load_cells(grid_dir, experiment))
    text = write_report(grid_dir, {"convergence": [], "ablations": [], "readings": []}, report, preface)
    assert "| psl | 2 |" in text and "| locfedmix | 2 |" in text
    assert "vs `psl`: final accuracy" in text
    # beside the best test accuracy over rounds (picked on test), the test accuracy of the round picked on validation
    picked = [validation_selected(read_metrics(grid_dir / "convergence" / "psl" / f"seed{s}" / "metrics.csv"))
              for s in (0, 1)]
    accuracy = [chosen["test_accuracy"] for chosen in picked]
    row = next(x for x in text.splitlines() if x.startswith("| psl | 2 |"))
    assert row.split(" | ")[3] == f"{100 * np.mean(accuracy):.2f} ± {100 * np.std(accuracy):.2f}"
    # the findings rank LocFedMix-SL by its mean final test accuracy, and judge the claim against `sfl` (the one
    # rival of the abstract that ran) by whether the mean ± std intervals separate
    finals = {a: np.array([final_test_accuracy(grid_dir / "convergence" / a / f"seed{s}") for s in (0, 1)])
              for a in ("psl", "sfl", "locfedmix")}
    rank = 1 + sum(finals[a].mean() > finals["locfedmix"].mean() for a in ("psl", "sfl"))
    ours, sfl = finals["locfedmix"], finals["sfl"]
    claim = "**holds**" if ours.mean() - ours.std() > sfl.mean() + sfl.std() else "**does not hold** (ahead of 0 of 1)"
    line = next(x for x in text.splitlines() if x.startswith("- **IID, N = 10** (convergence)"))
    assert f"rank {rank} of 3" in line and line.endswith(f"claim {claim}.")
    # the one reading is the best on validation, and is shown on test against the default `sfl`
    assert "- `mix-only`: val " in text and "Best LocFedMix-SL reading on validation: `mix-only`" in text
    assert (report.parent / "reproduction-tiny-convergence-round.png").stat().st_size > 0
    assert (report.parent / "reproduction-tiny-convergence.csv").exists()
    # the header names the model and device the convergence runs used, read from their own files
    assert "the small CNN cut after its two conv blocks (the 2-core CPU budget), run on cpu" in text
    config = grid_dir / "convergence" / "psl" / "seed0" / "config.toml"
    config.write_text(config.read_text().replace('model = "cnn"', 'model = "resnet"'))
    assert setup_note(grid_dir).startswith("the small CNN cut after its two conv blocks (the 2-core CPU budget), "
                                           "the ResNet cut after its second stage, run on cpu")


def write_cell(folder: Path, test_accuracy: float) -> None:
    """A finished seed of a grid cell whose one round ends at `test_accuracy`."""
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text("{}")
    (folder / "metrics.csv").write_text(
        "round,step,algorithm,n_clients,train_loss,val_loss,val_accuracy,test_loss,test_accuracy,bytes_up,"
        f"bytes_down,simulated_seconds\n1,10,sfl,2,1.0,1.0,0.5,1.0,{test_accuracy},1,1,1.0\n")


def test_report_puts_the_standardized_grid_beside_its_unstandardized_twin(tmp_path):
    """The cells both grids hold, final test accuracy side by side with the change in points and the verdict; a
    cell only one grid holds is left out, and the twin's own report has no such section."""
    from reproduction_report import side_by_side

    grid, twin = tmp_path / "full", tmp_path / "full-unstandardized"
    for seed, (new, old) in enumerate([(0.85, 0.80), (0.87, 0.82)]):
        write_cell(grid / "convergence" / "sfl" / f"seed{seed}", new)
        write_cell(twin / "convergence" / "sfl" / f"seed{seed}", old)
        write_cell(grid / "convergence" / "psl" / f"seed{seed}", 0.7)
    lines = side_by_side(grid, {"convergence": [], "ablations": []})
    rows = [line for line in lines if line.startswith("| convergence |")]
    assert rows == ["| convergence | sfl | 81.00 ± 1.00 (2) | 86.00 ± 1.00 (2) | +5.00 | ahead |"]
    assert side_by_side(twin, {"convergence": []}) == []


def test_a_cell_equal_to_another_runs_once_and_is_copied(tmp_path, monkeypatch):
    """`scalability`'s sfl at N = 10 is `convergence`'s sfl: one run (on whichever device), copied and labelled."""
    ran = []

    def fake_run(out, config, threads=None):
        ran.append(out)
        out.mkdir(parents=True)
        (out / "config.toml").write_text(f'algorithm = "{config.algorithm}"\n')
        (out / "metrics.csv").write_text("round,test_accuracy\n1,0.5\n")
        (out / "summary.json").write_text(json.dumps({"device": config.engine.device}))

    monkeypatch.setattr(reproduce, "run_cell", fake_run)
    cells = [("convergence", "sfl", {"algorithm": "sfl"}),
             ("scalability", "sfl-n10", {"algorithm": "sfl", "n_clients": 10}),
             ("scalability", "sfl-n5", {"algorithm": "sfl", "n_clients": 5})]
    seeds = {"convergence": 1, "scalability": 1}
    reproduce.run_grid(tmp_path, cells, seeds, 2, ["engine.device=cpu", "eval.batch_size=7"], workers=1)
    ran = sorted(p.relative_to(tmp_path).as_posix() for p in ran)
    assert ran == ["convergence/sfl/seed0", "scalability/sfl-n5/seed0"]
    copied = json.loads((tmp_path / "scalability/sfl-n10/seed0/summary.json").read_text())
    assert copied == {"device": "cpu", "copied_from": "convergence/sfl/seed0"}
    assert (tmp_path / "scalability/sfl-n10/seed0/metrics.csv").read_text().endswith("0.5\n")
    assert reproduce.identity(reproduce.cell_config({"algorithm": "sfl"}, 0, 2, ["engine.device=cuda"])) == \
        reproduce.identity(reproduce.cell_config({"algorithm": "sfl"}, 0, 2, []))
    assert reproduce.identity(reproduce.cell_config({"algorithm": "sfl"}, 1, 2, [])) != \
        reproduce.identity(reproduce.cell_config({"algorithm": "sfl"}, 0, 2, []))


def test_a_cell_cut_short_continues_from_its_checkpoint(tmp_path, monkeypatch):
    """A grid stopped mid-run loses no finished round: the cell resumes and ends equal to an uninterrupted run."""
    config = validate({"algorithm": "locfedmix", "dataset": "synthetic", "n_clients": 2, "samples_per_client": 20,
                       "rounds": 3, "batch_size": 10, "seed": 4})
    reproduce.run_cell(tmp_path / "whole", config)
    with monkeypatch.context() as patch:
        interrupt_at(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            reproduce.run_cell(tmp_path / "cut", config)
    reproduce.run_cell(tmp_path / "cut", config)
    starts = [e for e in events(tmp_path / "cut") if e["event"] == "run_start"]
    assert [e["resumed_from_round"] for e in starts] == [None, 2]
    assert (tmp_path / "cut/metrics.csv").read_text() == (tmp_path / "whole/metrics.csv").read_text()
    other = config.model_copy(update={"seed": 5})  # another run's checkpoint is not resumed: the cell starts over
    with monkeypatch.context() as patch:
        interrupt_at(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            reproduce.run_cell(tmp_path / "cut", other)
    assert [e["resumed_from_round"] for e in events(tmp_path / "cut") if e["event"] == "run_start"] == [None]


@pytest.mark.parametrize("budget, recomputed", [([], 0.0), (["--activation-mb", "0"], 1.0)])
def test_throughput_cell_reports_rates_and_memory(budget, recomputed):
    """The per-cell path of benchmarks/throughput.py (the one each subprocess runs), on the CPU in a blink."""
    script = Path(__file__).parent.parent / "benchmarks" / "throughput.py"
    out = subprocess.run([sys.executable, str(script), "--cell", "locfedmix", "3", "2", "--seconds", "0.05",
                          "--repeats", "3", "--engine", "vectorized", "--device", "cpu", *budget],
                         capture_output=True, text=True, check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["engine"] == "StackedClients" and row["cell"] == "locfedmix/3/2" and row["recomputed"] == recomputed
    assert row["samples_per_s"] > 0 and row["centralized_samples_per_s"] > 0 and row["peak_memory_mb"] > 0
    assert row["work_per_sample"] > 1  # the decoder and SmashMix's extra server samples are real work
    assert row["repeats"] == 3 and row["ratio_min"] <= row["ratio"] <= row["ratio_max"]
    assert row["denormals"] == "flushed"  # as a run does by default, for both rates
    assert row["work_ratio"] == pytest.approx(row["ratio"] * row["work_per_sample"])


def test_reliability_report_counts_the_suite_and_sweeps_faults(tmp_path, monkeypatch):
    """The figures come from the suite's own parametrization and settings; the sweep's bytes fall with dropout."""
    monkeypatch.setattr(reliability, "SWEEP", {"algorithms": ["psl"], "dropout": [0.0, 0.5], "fraction": [1.0, 0.5]})
    figures = reliability.suite_figures()
    assert figures["resume_cases"] >= len(ALGORITHMS) + 1 and figures["resume_cases_with_faults"] >= 1
    assert figures["hypothesis"]["max_examples"] >= 100
    rows = reliability.dropout_sweep(reliability.QUICK)
    text = reliability.write_report(figures, [], rows, reliability.QUICK, tmp_path)
    assert "| psl |" in text and "f=0.5, p=0.5" in text
    up = {(r["fraction"], r["dropout"]): r["mb_up"] for r in rows}
    assert up[1.0, 0.5] <= up[1.0, 0.0] and up[0.5, 0.0] < up[1.0, 0.0]
    assert json.loads((tmp_path / "reliability.json").read_text())["sweep"] == rows


def test_privacy_report_is_built_from_finished_cells(tmp_path, monkeypatch):
    """benchmarks/privacy.py end to end on a tiny synthetic grid: cells run, then table, CSV, JSON and pictures."""
    import privacy

    monkeypatch.setattr(privacy, "RESULTS", tmp_path)
    monkeypatch.setattr(privacy, "CELLS_DIR", tmp_path / "privacy")
    tiny = {"dataset": "synthetic", "n_clients": 2, "samples_per_client": 20, "rounds": 1, "batch_size": 10,
            "leakage": {"enabled": True, "aux_samples": 50, "samples_per_client": 8, "attack_epochs": 1}}
    monkeypatch.setattr(privacy, "SETTINGS", {**privacy.SETTINGS, **tiny})
    monkeypatch.setattr(privacy, "DEFENDED", [("psl", "noise0.05")])
    monkeypatch.setattr(privacy, "cells", lambda: [("psl", "psl", "none"), ("psl+noise0.05", "psl", "noise0.05")])
    for cell in privacy.cells():
        privacy.run_cell(*cell)
    text = privacy.write_report([privacy.load(*cell) for cell in privacy.cells()])
    assert "| psl | none |" in text and "| psl+noise0.05 | clip C = 5, noise σ = 0.05 (std 0.25) |" in text
    assert "`psl+noise0.05` against `psl`" in text and "Undefended, the attack" in text
    rows = list(csv.DictReader((tmp_path / "privacy.csv").open()))
    assert [r["cell"] for r in rows] == ["psl", "psl+noise0.05"]
    assert (tmp_path / "privacy-reconstructions.png").stat().st_size > 0
    assert (tmp_path / "privacy-tradeoff.png").stat().st_size > 0


def _throughput_row(algorithm, n_clients, per_client, ratio, work=1.0, peak=1000.0, engine="LoopClients",
                    recomputed=0.0):
    return {"cell": f"{algorithm}/{n_clients}/{per_client}", "algorithm": algorithm, "n_clients": n_clients,
            "per_client": per_client, "engine": engine, "recomputed": recomputed, "samples_per_s": 1000.0 * ratio,
            "centralized_samples_per_s": 1000.0, "ratio": ratio, "ratio_min": ratio - 0.01,
            "ratio_max": ratio + 0.01, "repeats": 3, "work_per_sample": work, "work_ratio": ratio * work,
            "peak_memory_mb": peak, "threads": 2, "host_memory": "keep"}


def test_throughput_targets_say_where_each_algorithm_lands_and_its_ceiling_at_psl_rate():
    """Met or not against the issue's numbers, and the ceiling psl's FLOP rate gives: psl's work ratio ÷ work."""
    from throughput_targets import targets_markdown

    rows = [_throughput_row("psl", 100, 16, 1.08), _throughput_row("sfl", 100, 16, 0.97),
            _throughput_row("locfedmix", 100, 16, 0.53, work=1.35),
            _throughput_row("psl", 1000, 1, 0.58, engine="StackedClients"),
            _throughput_row("locfedmix", 1000, 1, 0.40, work=1.35, engine="StackedClients"),
            _throughput_row("locfedmix", 1000, 1, 0.30, work=1.35),  # no psl row on the loop: no ceiling
            _throughput_row("psl", 1000, 16, 0.59, peak=4732.0, recomputed=0.62),
            _throughput_row("locfedmix", 1000, 16, 0.5, work=1.35, peak=9000.0),
            _throughput_row("locsplitfed", 100, 16, 0.90)]  # not a targeted algorithm
    text = targets_markdown(rows)
    assert "| ratio ≥ 1.0 at 100 × 16 | psl | LoopClients | 1.08 (1.07–1.09) | yes | 1.08 |" in text
    assert "| ratio ≥ 1.0 at 100 × 16 | sfl | LoopClients | 0.97 (0.96–0.98) | **no** | 1.08 |" in text
    assert "| ratio ≥ 1.0 at 100 × 16 | locfedmix | LoopClients | 0.53 (0.52–0.54) | **no** | 0.80 |" in text
    assert "| ratio ≥ 0.5 at 1,000 × 1 | locfedmix | StackedClients | 0.40 (0.39–0.41) | **no** | 0.43 |" in text
    assert "| ratio ≥ 0.5 at 1,000 × 1 | locfedmix | LoopClients | 0.30 (0.29–0.31) | **no** |  |" in text
    assert "| peak ≤ 8 GiB at 1,000 × 16 | psl | LoopClients, 62% recomputed | 4,732 MiB | yes | |" in text
    assert "| peak ≤ 8 GiB at 1,000 × 16 | locfedmix | LoopClients | 9,000 MiB | **no** | |" in text
    assert "locsplitfed" not in text and text.count("\n| ratio") == 6


def test_throughput_targets_give_locfedmix_share_of_psl_flop_rate_and_one_line_per_n():
    """#29: locfedmix's work ratio ÷ psl's in the same cell and pool, met at ≥ 0.9; the ratios per N side by side."""
    from throughput_targets import targets_markdown

    rows = [_throughput_row("psl", n, 16, r) for n, r in ((1, 0.6), (10, 0.8), (100, 1.0), (1000, 0.7))]
    rows += [_throughput_row("locfedmix", 100, 16, 0.62, work=1.5),
             _throughput_row("locfedmix", 1000, 16, 0.4, work=1.5),
             _throughput_row("locfedmix", 10, 16, 0.5, work=1.5, engine="StackedClients")]  # no psl on its pool
    text = targets_markdown(rows)
    assert "| 100 × 16 | LoopClients | 0.93 | 1.00 | 0.93 | yes |" in text  # 0.62 × 1.5 = 0.93 of 1.0
    assert "| 1,000 × 16 | LoopClients | 0.60 | 0.70 | 0.86 | **no** |" in text
    close = targets_markdown([_throughput_row("psl", 100, 16, 0.996)])  # shown as 1.00, yet below 1.0
    assert "| ratio ≥ 1.0 at 100 × 16 | psl | LoopClients | 1.00 (0.99–1.01) | **no** (0.996) |" in close
    assert "| 10 × 16 | StackedClients" not in text
    assert "| 16 | 1 | 0.60 (0.59–0.61) |  |" in text
    assert "| 16 | 1,000 | 0.70 (0.69–0.71) | 0.40 (0.39–0.41) |" in text
    assert [ln.split(" | ")[1] for ln in text.splitlines() if ln.startswith("| 16 | ")] == ["1", "10", "100", "1,000"]


def test_throughput_table_names_the_machine_its_centralized_rate_and_load():
    import throughput

    rows = [{**_throughput_row("psl", 100, 16, 1.0), "load": [1.2, 1.5], "processor": "AMD EPYC", "cpus": 2},
            {**_throughput_row("sfl", 100, 16, 0.9), "centralized_samples_per_s": 3000.0, "load": [1.1, 2.0],
             "processor": "AMD EPYC", "cpus": 2}]
    text = throughput.markdown(rows, "cpu")
    assert "Machine: AMD EPYC, 2 CPUs; centralized training on the cpu ran at 2,000 samples/s (median over the " \
           "cells; 1,000–3,000); 1-minute load average 1.10–2.00 at the cells' start and end." in text
    assert "| 1.00 | 1000 | 1.2–1.5 |" in text


def test_decoder_ways_give_the_loops_gradients_and_compile_fails_over(monkeypatch):
    """benchmarks/decoder_speed.py: every way of computing the decoder lands on the loop's weight gradients (to
    float32 rounding); where torch.compile cannot build (here: made to raise), its row says why instead."""
    import decoder_speed

    def fails_at_first_call(*args, **kwargs):  # as inductor does: compiling starts when the function first runs
        def run(*inputs):
            raise RuntimeError("no working C++ compiler\nmore detail")
        return run

    monkeypatch.setattr(decoder_speed.torch, "compile", fails_at_first_call)
    rows = decoder_speed.measure(3, 2, seconds=0.0, repeats=1)
    ways = {row.split(" | ")[1]: row.split(" | ") for row in rows}
    assert set(ways) == {"loop", "loop, last conv NCHW", "loop, last conv as tap sums", "loop, planar products",
                         "batched (vmap)", "loop, torch.compile"}
    assert ways["loop, torch.compile"][2] == "unavailable: RuntimeError: no working C++ compiler"
    gaps = [float(cells[4].strip(" |")) for name, cells in ways.items() if name != "loop, torch.compile"]
    assert all(g < 1e-5 for g in gaps) and any(g > 0 for g in gaps)  # other sums, the same gradients
    # the last convolution alone, at the decoder's own output count (the image's channels) and around it
    rows = decoder_speed.last_conv_rows(2, seconds=0.0, repeats=1)
    assert [int(row.split(" | ")[0].strip("| ")) for row in rows] == [1, decoder_speed.SHAPE[0], 8, 16]
    assert all(float(row.split(" | ")[1].strip(" |")) > 0 for row in rows)


def gpu_command() -> list[str]:
    """The arguments of the one GPU command docs/performance.md gives for the 10,000-client rows."""
    page = (Path(__file__).parent.parent / "docs" / "performance.md").read_text()
    (command,) = [block for block in re.findall(r"^```sh\n(.*?)^```", page, flags=re.S | re.M)
                  if block.startswith("python benchmarks/throughput.py --device cuda")]
    return command.replace("\\\n", " ").split()[2:]


def test_the_documented_gpu_command_runs_on_the_cpu_at_tiny_sizes(tmp_path, monkeypatch, capsys):
    """The documented command as written, but on the CPU with 3 clients × 2 samples (later options win): the table
    and the targets come out; with no time budget left, every cell is named as not measured and nothing written."""
    import throughput

    command = gpu_command()
    assert command[command.index("--clients") + 1] == "10000" and "--budget-s" in command
    tiny = ["--device", "cpu", "--algorithms", "psl", "locfedmix", "--clients", "3", "--per-client", "2",
            "--seconds", "0.05", "--repeats", "1"]
    monkeypatch.setattr(throughput, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", ["throughput.py", *command, *tiny, "--budget-s", "0"])
    with pytest.raises(SystemExit) as spent:
        throughput.main()
    assert spent.value.code == 1 and "psl/3/2/auto, locfedmix/3/2/auto" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(sys, "argv", ["throughput.py", *command, *tiny])
    throughput.main()
    tag = command[command.index("--tag") + 1]
    table = (tmp_path / f"THROUGHPUT-{tag}.md").read_text()
    assert "| psl | 3 | 2 |" in table and "| locfedmix | 3 | 2 |" in table and "| 3 × 2 | StackedClients |" in table


def test_profile_split_puts_convolutions_in_the_kernels_and_accounts_for_the_wall_time():
    import profile_step
    import torch

    prof, seconds, samples = profile_step.profiled_centralized(65, torch.device("cpu"))
    assert samples == 128  # whole steps of 64 until at least 65 samples
    parts = profile_step.split(prof, seconds)
    conv = sum(e.self_cpu_time_total for e in prof.key_averages() if "convolution" in e.key) / 1e6
    assert conv > 0 and parts["kernels"] >= conv and parts["other operators"] > 0
    assert sum(parts.values()) == pytest.approx(max(seconds, parts["kernels"] + parts["other operators"]))
    line = profile_step.split_line("x", parts, samples)
    assert line.startswith("| x | ") and line.count("|") == 6


def test_throughput_report_only_rebuilds_the_table_from_the_saved_rows(tmp_path, monkeypatch, capsys):
    import throughput

    monkeypatch.setattr(throughput, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", ["throughput.py", "--report-only", "--device", "cpu", "--tag", "t"])
    with pytest.raises(SystemExit) as missing:
        throughput.main()
    assert missing.value.code == 2 and "throughput_t.json" in capsys.readouterr().err
    rows = [_throughput_row("psl", 100, 16, 1.08), _throughput_row("locfedmix", 100, 16, 0.53, work=1.35)]
    (tmp_path / "throughput_t.json").write_text(json.dumps(rows))
    throughput.main()
    table = (tmp_path / "THROUGHPUT-t.md").read_text()
    assert "| locfedmix | 100 | 16 | LoopClients | 0% | 530 | 1000 | 0.53 (0.52–0.54) | 1.35 | 0.72 | 1000 |" in table
    assert "| ratio ≥ 1.0 at 100 × 16 | locfedmix | LoopClients | 0.53 (0.52–0.54) | **no** | 0.80 |" in table
    with open(tmp_path / "throughput_t.csv") as f:
        assert [r["algorithm"] for r in csv.DictReader(f)] == ["psl", "locfedmix"]
