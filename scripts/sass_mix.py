"""Instruction mix of a kernel's loops, from its SASS: the static numbers behind docs/gpu.md ("What the
instruction counts say"). No GPU needed.

    python scripts/sass_mix.py "amsim_gemm_expand16_f32<7, 0>" [--arch sm_90]

Compiles the instantiation with NVRTC (amsim.kernels.cuda._source), disassembles it with ``cuobjdump -sass`` (on PATH,
or from the ``nvidia-cuda-cuobjdump`` wheel: ``pip install nvidia-cuda-cuobjdump``) and prints, for the largest
loops (backward branches), their length and the count of each opcode. Divide by the products a loop body does
to get instructions per product.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from amsim.kernels.cuda import _source  # noqa: E402

_LINE = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_BRANCH = re.compile(r"\bBRA\b.*?0x([0-9a-f]+)")


def _cuobjdump() -> str:
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import nvidia

        for root in nvidia.__path__:
            for cand in Path(root).glob("*/bin/cuobjdump"):
                return str(cand)
    except ImportError:
        pass
    sys.exit("cuobjdump not found: put the CUDA toolkit's bin on PATH or `pip install nvidia-cuda-cuobjdump`.")


def loops(sass: str):
    """(first, last, instructions) of every loop, i.e. every backward branch, largest first."""
    addr, ins = [], []
    for line in sass.splitlines():
        if m := _LINE.match(line):
            addr.append(int(m.group(1), 16))
            ins.append(m.group(2))
    found = []
    for i, text in enumerate(ins):
        m = _BRANCH.search(text)
        if m and int(m.group(1), 16) < addr[i] and int(m.group(1), 16) in addr:
            j = addr.index(int(m.group(1), 16))
            found.append((j, i, ins[j : i + 1]))
    return sorted(found, key=lambda f: len(f[2]), reverse=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kernel", help='a name expression, e.g. "amsim_gemm_expand16_f32<7, 0>"')
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--top", type=int, default=4, help="how many loops to show")
    args = parser.parse_args(argv)
    res = _source.compile_cubin(args.arch, [args.kernel])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        # CuPy's getCUBIN leaves off the CUBIN's last byte (its program-header table then ends early)
        path.write_bytes(res.cubin + b"\0")
        sass = subprocess.run([_cuobjdump(), "-sass", str(path)], capture_output=True, text=True, check=True).stdout
    print(f"{args.kernel} for {args.arch}")
    for first, last, body in loops(sass)[: args.top]:
        ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", b).split()[0].split(".")[0] for b in body)
        print(f"  loop at instruction {first}-{last}: {len(body)} instructions: "
              + ", ".join(f"{op} {n}" for op, n in ops.most_common(12)))


if __name__ == "__main__":
    main()
