"""locfedmix: parallel split learning (LocFedMix-SL, Oh et al. WWW 2022) and its baselines, declared from parts."""

from pathlib import Path
from typing import Any

from locfedmix.algorithms.catalog import ALGORITHMS, Algorithm, register, resolve_algorithm
from locfedmix.config import Config, validate
from locfedmix.errors import UserError


def run(config: Config, out: str | Path | None = None, *, overwrite: bool = False, progress: bool = True,
        label: str | None = None, resume: bool = False, model: Any = None, dataset: Any = None,
        tune_process: bool = False) -> dict[str, Any]:
    """Train one configured experiment and return its summary (see locfedmix.api.run); `model` (a Model) and `dataset`
    (arrays, a torch or Hugging Face dataset, an ImageFolder) are the caller's own, in place of config.model and
    config.dataset; `tune_process` lets the run set process-wide floating-point and allocator modes and its thread
    count while it trains (the CLI does). The training code is imported on the first call, so that
    `import locfedmix` and validating a config stay light."""
    from locfedmix.api import run as _run

    return _run(config, out, overwrite=overwrite, progress=progress, label=label, resume=resume, model=model,
                dataset=dataset, tune_process=tune_process)


def __getattr__(name: str) -> Any:
    """`locfedmix.Model`, imported (with torch) only when asked for."""
    if name == "Model":
        from locfedmix.models import Model

        return Model
    raise AttributeError(f"module 'locfedmix' has no attribute {name!r}")


__all__ = ["ALGORITHMS", "Algorithm", "Config", "Model", "UserError", "register", "resolve_algorithm", "run",
           "validate"]
