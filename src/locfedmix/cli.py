"""Command line: `locfedmix run`, `latency`, `report` and `algorithms`; user mistakes end as one line on stderr, exit
code 2."""

import argparse
import os
import sys
import time
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from locfedmix.algorithms.catalog import ALGORITHMS
from locfedmix.engines.transports.distributed import is_primary, leave, lost_peer, rank
from locfedmix.errors import NothingTrained, NumericalError, RunFault, UserError
from locfedmix.files import folder_name

# Every rank meets the same mistake and only rank 0 reports it; another rank that exited first would have torchrun
# stop rank 0 before it printed (seen under load). The others wait this long, and torchrun stops them meanwhile.
PRIMARY_REPORTS_FIRST_S = 5.0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of argparse's usage block
        raise UserError(f"{message} (see '{self.prog} --help')")


def _version() -> str:
    try:
        return version("locfedmix")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="locfedmix", description="Parallel split learning: LocFedMix-SL and its baselines.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = commands.add_parser("run", help="train the configured algorithm(s) and write a run directory")
    run.add_argument("--config", help="TOML experiment file")
    run.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key (dotted for sections, e.g. algo.mix=false); repeatable")
    run.add_argument("--out", help="run directory (default: runs/<config name>)")
    run.add_argument("--overwrite", action="store_true", help="replace a run in --out (only the files locfedmix writes there)")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    latency = commands.add_parser("latency", help="per-step and per-round latency of every algorithm, no training")
    latency.add_argument("--config", required=True, help="TOML experiment file")
    latency.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config key; repeatable")
    commands.add_parser("algorithms", help="list the algorithms")
    report = commands.add_parser("report", help="Markdown report with plots from run directories")
    report.add_argument("dirs", nargs="+", metavar="DIR",
                        help="a run directory, or a folder holding run directories (e.g. runs/compare)")
    report.add_argument("--out", metavar="OUTDIR", help="folder for report.md and its PNGs (default: DIR/report)")
    deploy = commands.add_parser("deploy", help="write a Flower app (server and clients on their own machines)")
    deploy.add_argument("folder", help="a new folder for the app (its pyproject.toml names locfedmix's apps)")
    deploy.add_argument("--config", required=True, help="TOML experiment file (one run: no [sweep])")
    deploy.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key; repeatable")
    deploy.add_argument("--out", default="runs/flower", help="the server's run directory (default: runs/flower)")
    deploy.add_argument("--credentials", type=int, metavar="N",
                        help="also write a local certificate authority, the SuperLink's certificate and N "
                             "SuperNode key pairs into FOLDER/credentials, for a secure trial on this machine")
    return parser


def _deploy(args: argparse.Namespace) -> None:
    from locfedmix.config_files import apply_overrides, read_toml

    try:
        from locfedmix.deploy.app import write_app
        from locfedmix.deploy.credentials import write_credentials
    except ModuleNotFoundError as err:
        raise UserError(f"deploying needs Flower ({err.name} is missing); pip install 'locfedmix[flower]'") from None
    folder = Path(args.folder)
    if folder.exists():
        raise UserError(f"'{folder}' exists; name a new folder for the app")
    tree = apply_overrides(read_toml(args.config), args.overrides)
    if "sweep" in tree:
        raise UserError(f"{args.config} holds a [sweep]; a deployment is one run: pick one with --set or drop it")
    write_app(folder, tree, {"out": args.out})
    print(f"Flower app written to {folder}")
    if args.credentials:
        (folder / ".gitignore").write_text("credentials/\n")  # never packed into the app Flower ships
        paths = write_credentials(folder / "credentials", args.credentials)
        print(f"credentials for {args.credentials} SuperNodes written to {paths['ca'].parent}")


def _run(args: argparse.Namespace) -> None:
    from locfedmix.api import run
    from locfedmix.experiment import plan_experiment

    if args.resume:
        return _resume(args)
    if not args.config:
        raise UserError("run needs --config FILE (or --resume DIR)")
    cells = plan_experiment(args.config, args.overrides)
    base = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    results = []
    folders = cell_folders(base, [cell.label for cell in cells])
    for k, (cell, out) in enumerate(zip(cells, folders, strict=True), 1):
        if cell.note:
            _say(f"{cell.label}: {cell.note}")
        desc = f"[{k}/{len(cells)}] {cell.label}" if len(cells) > 1 else cell.label or None
        summary = run(cell.config, out, overwrite=args.overwrite, progress=not args.no_progress, label=desc,
                      tune_process=True)
        _warn(summary)
        row = _result_row(cell.label or cell.config.algorithm, summary)
        results.append(row)
        _say(f"{row[0]}: test accuracy {row[1]} after round {row[2]}; target {row[5]} → {out}")
    if len(results) > 1:
        _say(_table(results))


def cell_folders(base: Path, labels: list[str]) -> list[Path]:
    """Each sweep cell's run directory: a child of --out named after its label (never a path that a label's '..',
    '/' or absolute value could carry outside --out); two labels that would share a folder are refused up front."""
    folders = [base / folder_name(label, "sweep cell label") if label else base for label in labels]
    for k, folder in enumerate(folders):
        if folder in folders[:k]:
            raise UserError(f"sweep cells '{labels[folders.index(folder)]}' and '{labels[k]}' would share the run "
                            f"directory '{folder}'; give the [sweep] values that differ in more than / or \\")
    return folders


def _warn(summary: dict) -> None:
    """A run's warnings (nothing trained, say) as one line each on stderr."""
    for message in summary.get("warnings", []) if is_primary() else []:
        print(f"locfedmix: warning: {one_line(Exception(message))}", file=sys.stderr, flush=True)


def _say(text: str) -> None:
    """Print once per run: in a distributed run every rank holds the same results and rank 0 speaks."""
    if is_primary():
        print(text, flush=True)


def _resume(args: argparse.Namespace) -> None:
    """Resume one run directory with the exact config it was started with."""
    from locfedmix.api import run
    from locfedmix.config import validate
    from locfedmix.config_files import read_toml
    from locfedmix.run_guard import as_written_then

    if args.config or args.overrides:
        raise UserError("--resume continues a run with its own config.toml; drop --config and --set")
    directory = Path(args.resume)
    # as written, whoever wrote it (the CLI or the API), and by whichever version: what it predates, it did not do
    config = validate(as_written_then(read_toml(directory / "config.toml")))
    summary = run(config, directory, progress=not args.no_progress, resume=True, tune_process=True)
    _warn(summary)
    row = _result_row(config.algorithm, summary)
    _say(f"{row[0]}: test accuracy {row[1]} after round {row[2]}; target {row[5]} → {directory}")


RESULT_HEADER = ("run", "test accuracy", "rounds", "MB up", "MB down", "time to target (simulated)", "wall s",
                 "test acc at best val (round)")


def _result_row(name: str, summary: dict) -> tuple[str, ...]:
    final, target = summary["final"], summary["time_to_target"]
    reached = (f"{target['simulated_seconds']:.1f} s at {target['target_accuracy']:.0%}" if target["reached"]
               else f"not reached ({target['target_accuracy']:.0%})")
    chosen = summary["validation_selected"]
    selected = f"{chosen['test_accuracy']:.4f} ({chosen['round']})" if chosen else "no validation split"
    return (name, f"{final['test_accuracy']:.4f}", str(final["round"]), f"{final['bytes_up'] / 1e6:.1f}",
            f"{final['bytes_down'] / 1e6:.1f}", reached, f"{summary['wall_seconds']:.1f}", selected)


def _table(rows: list[tuple[str, ...]]) -> str:
    """A Markdown table, the first column left-aligned and the rest right-aligned."""
    rows = [RESULT_HEADER, *rows]
    widths = [max(len(r[k]) for r in rows) for k in range(len(RESULT_HEADER))]
    cells = lambda r: "| " + " | ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(r, widths)))
    rule = "|" + "|".join("-" * (w + 1) + (":" if k else "-") for k, w in enumerate(widths)) + "|"
    return "\n".join([cells(rows[0]) + " |", rule, *(cells(r) + " |" for r in rows[1:])])


def _flat(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        out |= _flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


def _latency(args: argparse.Namespace) -> None:
    """One table of every algorithm per distinct setting of the experiment, titled by the config file and by the
    settings in which the tables differ (never by a cell's algorithm: every table shows them all)."""
    from locfedmix.api import federate
    from locfedmix.experiment import load_experiment
    from locfedmix.latency.report import latency_table

    settings: dict[str, tuple[dict, object]] = {}
    for _, config in load_experiment(args.config, args.overrides):
        setting = _flat(config.model_dump(mode="json", exclude={"algorithm", "algo"}))
        settings.setdefault(repr(setting), (setting, config))
    differing = [key for key in next(iter(settings.values()))[0]
                 if len({repr(s[key]) for s, _ in settings.values()}) > 1]
    for setting, config in settings.values():
        title = ", ".join([Path(args.config).stem, *(f"{key}={setting[key]}" for key in differing)])
        data = federate(config)
        profile = config.latency.resolved_profile()
        print(f"\n{title}: {config.n_clients} clients, batch {config.batch_size}, "
              f"profile '{config.latency.profile}' {profile}\n")
        print(latency_table(config, data.dataset.input_shape, data.dataset.n_classes, data.client_indices))


def _report(args: argparse.Namespace) -> None:
    from locfedmix.report import write_report

    print(f"report written to {write_report(args.dirs, args.out)}")


def _algorithms() -> None:
    for algo in ALGORITHMS.values():
        print(f"{algo.name:<12} {algo.summary} [{algo.reference}]")


def one_line(err: Exception) -> str:
    """The message with any line break a user's value brought in written as an escape."""
    return str(err).replace("\r", "\\r").replace("\n", "\\n")


def _kept(err: NumericalError) -> str:
    """What a numerical fault leaves to resume from: the last checkpoint, or none at all."""
    checkpoint = getattr(err, "checkpoint", None)
    if checkpoint is None:
        return "no checkpoint had been written, so there is nothing to resume (start again after fixing the cause)"
    return f"the last good checkpoint '{checkpoint}' is kept (--resume '{checkpoint.parent}' after fixing the cause)"


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        commands = {"run": _run, "latency": _latency, "report": _report, "deploy": _deploy,
                    "algorithms": lambda _: _algorithms()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NothingTrained)  # said once, as one line, from the summary
            commands[args.command](args)
        leave(together=True)
    except UserError as err:
        if is_primary():  # every rank meets the same mistake; one line is enough
            print(f"locfedmix: error: {one_line(err)}", file=sys.stderr)
        else:
            time.sleep(PRIMARY_REPORTS_FIRST_S)
        return 2
    except NumericalError as err:
        if is_primary():
            print(f"locfedmix: numerical fault: {err}; {_kept(err)}", file=sys.stderr)
        return 3
    except RunFault as err:
        print(f"locfedmix: error: {one_line(err)}", file=sys.stderr)
        return 4
    except KeyboardInterrupt:
        print("locfedmix: interrupted; results written so far are in the run directory", file=sys.stderr)
        return 130
    except RuntimeError as err:
        if not lost_peer(err):
            raise
        print(f"locfedmix: error: rank {rank()} lost contact with the other processes ({str(err).splitlines()[0]}); "
              "another rank died, hung or became unreachable; the last checkpoint is kept (--resume)", file=sys.stderr)
        sys.stderr.flush()
        os._exit(4)  # a process group with a dead peer aborts when torn down; every file is already flushed
    finally:
        leave()
    return 0
