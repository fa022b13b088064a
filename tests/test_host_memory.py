"""Freed host memory is kept for reuse: a large block comes from malloc's heap and stays there once freed."""

import ctypes
import subprocess
import sys

import pytest

from locfedmix import api
from locfedmix.config import validate

BLOCK_AFTER_FREE = """
import ctypes, sys, torch
from locfedmix.engines.backends.host_memory import keep_freed_host_memory
if sys.argv[1] == "keep":
    assert keep_freed_host_memory()
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
before = mallinfo2().hblkhd
block = torch.ones(15 * 2**19)  # 30 MB (under the 32 MiB ceiling), written
mapped = mallinfo2().hblkhd - before
del block
print(mapped, mallinfo2().fordblks)
"""
MB = 2**20


def block_after_free(setting: str) -> tuple[int, int]:
    """(bytes of the 30 MB block that malloc mapped on its own, bytes free in malloc's heap once it is freed)."""
    out = subprocess.run([sys.executable, "-c", BLOCK_AFTER_FREE, setting], capture_output=True, text=True,
                         check=True)
    mapped, kept = out.stdout.split()
    return int(mapped), int(kept)


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="the setting is glibc's (2.33 or later)")
def test_a_freed_block_stays_in_the_heap_for_the_next_step():
    mapped, kept = block_after_free("system")  # glibc's defaults: mapped apart, handed back to the OS when freed
    assert mapped >= 30 * MB and kept < 30 * MB
    mapped, kept = block_after_free("keep")
    assert mapped < MB and kept >= 30 * MB


def test_the_run_applies_the_setting_unless_told_not_to(monkeypatch):
    calls = []
    monkeypatch.setattr(api, "keep_freed_host_memory", lambda: calls.append(1))
    tiny = {"algorithm": "psl", "dataset": "synthetic", "n_clients": 2, "samples_per_client": 8, "rounds": 1,
            "batch_size": 4}
    api.run(validate(tiny), progress=False, tune_process=True)
    api.run(validate({**tiny, "engine": {"keep_host_memory": False}}), progress=False, tune_process=True)
    assert calls == [1]


def test_a_library_call_leaves_the_allocator_alone(monkeypatch):
    calls = []
    monkeypatch.setattr(api, "keep_freed_host_memory", lambda: calls.append(1))
    tiny = {"algorithm": "psl", "dataset": "synthetic", "n_clients": 2, "samples_per_client": 8, "rounds": 1,
            "batch_size": 4, "engine": {"keep_host_memory": True}}
    api.run(validate(tiny), progress=False)
    assert calls == []
