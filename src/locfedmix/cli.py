"""Command line: `locfedmix run` and `locfedmix algorithms`; user mistakes end as one line on stderr, exit code 2."""

import argparse
import sys
from pathlib import Path

from locfedmix.algorithms.catalog import ALGORITHMS
from locfedmix.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of argparse's usage block
        raise UserError(f"{message} (see '{self.prog} --help')")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="locfedmix", description="Parallel split learning: LocFedMix-SL and its baselines.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = commands.add_parser("run", help="train the configured algorithm(s) and write a run directory")
    run.add_argument("--config", required=True, help="TOML experiment file")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key (dotted for sections, e.g. algo.mix=false); repeatable")
    run.add_argument("--out", help="run directory (default: runs/<config name>)")
    run.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    commands.add_parser("algorithms", help="list the algorithms")
    return parser


def _run(args: argparse.Namespace) -> None:
    from locfedmix.api import run
    from locfedmix.experiment import load_experiment

    cells = load_experiment(args.config, args.overrides)
    base = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    results = []
    for label, config in cells:
        out = base / label if label else base
        summary = run(config, out, overwrite=args.overwrite, progress=not args.no_progress, label=label or None)
        final = summary["final"]
        results.append((label or config.algorithm, final["test_accuracy"], final["round"], summary["wall_seconds"]))
        print(f"{label or config.algorithm}: test accuracy {final['test_accuracy']:.4f} after round "
              f"{final['round']} → {out}", flush=True)
    if len(results) > 1:
        print(_table(results))


def _table(results: list[tuple[str, float, int, float]]) -> str:
    width = max(len(r[0]) for r in results)
    lines = [f"| {'run':<{width}} | test accuracy | rounds | seconds |", f"|{'-' * (width + 2)}|--------------:|-------:|--------:|"]
    lines += [f"| {name:<{width}} | {acc:13.4f} | {rounds:6d} | {secs:7.1f} |" for name, acc, rounds, secs in results]
    return "\n".join(lines)


def _algorithms() -> None:
    for algo in ALGORITHMS.values():
        print(f"{algo.name:<12} {algo.summary} [{algo.reference}]")


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        _run(args) if args.command == "run" else _algorithms()
    except UserError as err:
        print(f"locfedmix: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("locfedmix: interrupted; results written so far are in the run directory", file=sys.stderr)
        return 130
    return 0
