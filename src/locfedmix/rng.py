"""Seeded random generators derived from (seed, purpose, keys...); nothing in the library uses the global RNG."""

import zlib
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch


def _seed_sequence(seed: int, purpose: str, keys: tuple[int, ...]) -> np.random.SeedSequence:
    # crc32 is stable across processes and Python versions, unlike hash().
    return np.random.SeedSequence(entropy=seed, spawn_key=(zlib.crc32(purpose.encode()), *keys))


def derive_seed(seed: int, purpose: str, *keys: int) -> int:
    """A 63-bit seed that depends only on the run seed, the purpose of the draw and its keys (client, round, ...)."""
    return int(_seed_sequence(seed, purpose, keys).generate_state(1, np.uint64)[0] >> np.uint64(1))


def numpy_generator(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    return np.random.default_rng(_seed_sequence(seed, purpose, keys))


def torch_generator(seed: int, purpose: str, *keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, purpose, *keys))


@contextmanager
def seeded_torch(seed: int, purpose: str, *keys: int) -> Iterator[None]:
    """Run module construction (whose initialisers draw from torch's default generator) under a derived seed,
    restoring the caller's global RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, purpose, *keys))
        yield
