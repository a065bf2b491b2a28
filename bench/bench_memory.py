"""Peak memory of loading large tensors (VmHWM above the interpreter's baseline; Linux).

    .venv/bin/python bench/bench_memory.py [--mib 256]

Saves one int8 tensor of --mib MiB, then in a fresh interpreter per case measures the peak
resident memory of ``needle.load`` and of ``NDArray(numpy int8 array)``. The contract
(docs/ARCHITECTURE.md, "Limits and validation") is at most twice the tensor's size.
"""
import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CASES = {
    "needle.load": "t = needle.load(PATH)['w']",
    "NDArray(int8 numpy)": "src = np.ones(N, np.int8); before = rss(); "
                           "a = NDArray(src, dtype='int8')",
}

SCRIPT = """
import numpy as np, needle
from needle.backend_ndarray import NDArray
def rss():  # VmHWM: the peak of this process only (ru_maxrss inherits the parent's at fork)
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))
PATH, N = {path!r}, {n}
before = rss()
{body}
print((rss() - before) // 1024)
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256)
    args = ap.parse_args()
    n = args.mib << 20
    import numpy as np
    sys.path.insert(0, str(REPO))
    import needle
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "big.safetensors")
        needle.save({"w": np.full(n, 3, np.int8)}, path)
        print(f"| case | tensor MiB | peak above baseline MiB | ratio |\n| --- | --- | --- | --- |")
        for name, body in CASES.items():
            out = subprocess.run([sys.executable, "-c", SCRIPT.format(path=path, n=n, body=body)],
                                 capture_output=True, text=True, check=True, cwd=REPO,
                                 env=dict(os.environ, PYTHONPATH=str(REPO)))
            peak = int(out.stdout.split()[-1])
            print(f"| {name} | {args.mib} | {peak} | {peak / args.mib:.2f} |")


if __name__ == "__main__":
    main()
