"""Results people can look at: run directories → a Markdown report with PNG plots (`locfedmix report`)."""

from locfedmix.report.build import write_report
from locfedmix.report.runs import Run, find_runs

__all__ = ["Run", "find_runs", "write_report"]
