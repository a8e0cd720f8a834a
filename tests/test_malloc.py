"""amsim.reuse_freed_memory, in a fresh process each time (the setting is process-wide)."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_CODE = """
import os, numpy as np, amsim
on = amsim.reuse_freed_memory()
assert amsim.reuse_freed_memory() == on  # once per process, the same answer
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
r0 = rss()
a = np.empty(64 << 20, np.uint8)  # above glibc's largest mmap threshold (32 MiB)
a[::4096] = 1  # touch every page
del a
print(on, (rss() - r0) >> 20)
"""


def _run(env_value):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("AMSIM_MALLOC", None)
    if env_value is not None:
        env["AMSIM_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", _CODE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings are glibc's")
def test_reuse_freed_memory_keeps_freed_blocks():
    """What a training step needs: a freed 64 MiB block stays with the process (the next step's buffer reuses
    its pages instead of faulting in fresh zeroed ones); glibc's default returns it to the system."""
    on, kept_mib = _run(None)
    assert on
    assert kept_mib >= 60
    off, kept_default = _run("default")
    assert not off
    assert kept_default < 8
