"""Denormal floats flushed to zero on the CPU while a run trains (engine.flush_denormals, default on).

Adam keeps a running mean of each weight's gradient. Where a gradient stays exactly zero — the weights into a
ReLU unit that never fires: 60 of the 128 units of the server's first layer after a 20-round Fashion-MNIST `sl`
run — that mean shrinks by β1 = 0.9 every step and, after some 800 steps, falls below float32's smallest normal
number (1.2e-38); 42 % of that layer's first moments had. x86 CPUs compute with such denormal numbers in microcode,
many times slower: at 1,000 clients × 16 samples (random data) the `sl` server's Adam step took 3.1 ms with them
and 0.32 ms flushed. Flushed, they are read and written as zero, so an update changes by less than 1e-30 of the
learning rate: that `sl` run wrote the same metrics.csv, digit for digit, 12 % faster.

The mode lives in each thread's floating-point control register (MXCSR on x86) and a thread inherits it when it
starts. torch's intra-op threads (an OpenMP pool) may already be running, so the pool is released
(omp_pause_resource_all) and the next parallel operator starts a new one that carries the mode. It also rules
Python's own floats and NumPy's in that thread, so a run holds it for its training rounds only (its data and
partition are drawn before, as without it) and restores the process afterwards.
"""

import ctypes
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

OMP_PAUSE_HARD = 2  # omp_pause_resource_t: release every thread and resource
OPENMP_RUNTIMES = ("libgomp", "libiomp", "libomp")  # GNU (torch's Linux wheels), Intel, LLVM


def flushing() -> bool:
    """Whether this thread computes denormals as zero now: half the smallest normal double comes out as zero."""
    return sys.float_info.min / 2 == 0.0


@contextmanager
def denormals_flushed(enabled: bool = True) -> Iterator[None]:
    """Within the block, denormal floats are zero in this thread and in torch's intra-op threads; afterwards both
    compute with them again. Nothing changes where `enabled` is false, where the thread flushes already (someone
    set it; it stays) or where the CPU has no such mode."""
    if not enabled or flushing() or not torch.set_flush_denormal(True):
        yield
        return
    restart_intra_op_threads()
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        restart_intra_op_threads()


def restart_intra_op_threads() -> None:
    """Release torch's OpenMP threads, so that the next parallel operator starts new ones, which inherit this
    thread's floating-point mode (no-op where the runtime is not found)."""
    runtime = loaded_openmp_runtime()
    if runtime is not None:
        runtime.omp_pause_resource_all(OMP_PAUSE_HARD)


def loaded_openmp_runtime() -> ctypes.CDLL | None:
    """The OpenMP runtime this process has loaded (the one torch's kernels run on, found in /proc/self/maps), or
    None: not Linux, no OpenMP runtime yet, or one without OpenMP 5.0's pause."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return None
    fields = [line.split(maxsplit=5) for line in maps]
    paths = sorted({f[5] for f in fields if len(f) == 6 and Path(f[5]).name.startswith(OPENMP_RUNTIMES)})
    for path in paths:
        try:
            runtime = ctypes.CDLL(path)  # already loaded: the same handle, and no initialiser runs again
        except OSError:  # a mapping whose file is gone ("... (deleted)")
            continue
        pause = getattr(runtime, "omp_pause_resource_all", None)
        if pause is not None:
            pause.argtypes, pause.restype = [ctypes.c_int], ctypes.c_int
            return runtime
    return None
