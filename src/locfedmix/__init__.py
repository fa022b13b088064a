"""locfedmix: parallel split learning (LocFedMix-SL, Oh et al. WWW 2022) and its baselines, declared from parts."""

from pathlib import Path
from typing import Any

from locfedmix.algorithms.catalog import ALGORITHMS, Algorithm, register, resolve_algorithm
from locfedmix.config import Config, validate
from locfedmix.errors import UserError


def run(config: Config, out: str | Path | None = None, *, overwrite: bool = False, progress: bool = True,
        label: str | None = None, resume: bool = False, tune_process: bool = False) -> dict[str, Any]:
    """Train one configured experiment and return its summary (see locfedmix.api.run). The training code is imported
    on the first call, so that `import locfedmix` and validating a config stay light."""
    from locfedmix.api import run as _run

    return _run(config, out, overwrite=overwrite, progress=progress, label=label, resume=resume,
                tune_process=tune_process)


__all__ = ["ALGORITHMS", "Algorithm", "Config", "UserError", "register", "resolve_algorithm", "run", "validate"]
