"""locfedmix: parallel split learning (LocFedMix-SL, Oh et al. WWW 2022) and its baselines, declared from parts."""

from locfedmix.algorithms.catalog import ALGORITHMS, Algorithm, resolve_algorithm
from locfedmix.config import Config, validate
from locfedmix.errors import UserError


def run(config: Config, out=None, **kwargs):
    """Train one configured experiment; see locfedmix.api.run."""
    from locfedmix.api import run as _run

    return _run(config, out, **kwargs)


__all__ = ["ALGORITHMS", "Algorithm", "Config", "UserError", "resolve_algorithm", "run", "validate"]
