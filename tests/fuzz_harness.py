"""Seeded fuzzing of the native kernels and the file loaders, every case in a subprocess.

``run_cases(cases)`` runs ``(family, seed)`` cases in batches, each batch in a fresh worker
process (``python tests/fuzz_harness.py``, reading the cases as JSON on stdin). The worker
announces each case before running it, so a crash (a signal) or a hang (the batch timeout)
names its culprit; that case is re-run alone to confirm and the batch goes on after it.

Each case returns one outcome:
  ok      valid input, result equal to the numpy reference
  clean   invalid input refused with a documented exception (ValueError, TypeError, ...)
  wrong   a result differing from the reference, a valid input refused, an invalid one
          accepted, or an undocumented exception (RecursionError, SystemError, ...)
  blowup  MemoryError, or resident memory growing by more than 512 MiB in one case
  crash / hang   from the driver: the worker died on a signal or ran past its timeout
The worker runs under an address-space limit, so a runaway allocation fails fast.
"""
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLEAN = (ValueError, TypeError, IndexError, KeyError, OSError)
BLOWUP_KIB = 512 * 1024
ADDRESS_LIMIT = 16 << 30

# ------------------------------------------------------------------------------ the driver


def _spawn(cases, timeout):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    try:
        p = subprocess.run([sys.executable, str(Path(__file__).resolve())],
                           input=json.dumps(cases), capture_output=True, text=True,
                           timeout=timeout, env=env, cwd=str(REPO))
        out, rc = p.stdout, p.returncode
        err = p.stderr
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        rc, err = None, "timeout"
    results, started = {}, None
    for line in out.splitlines():
        if line.startswith("START "):
            started = int(line[6:])
        elif line.startswith("DONE "):
            i, outcome, detail = json.loads(line[5:])
            results[i] = (outcome, detail)
            started = None
    return results, started, rc, err


def run_cases(cases, batch=150, timeout=120.0, case_timeout=30.0):
    """Run ``cases`` (list of (family, seed)); return ``{(family, seed): (outcome, detail)}``."""
    cases = [list(c) for c in cases]
    results = {}
    pending = [cases[i:i + batch] for i in range(0, len(cases), batch)]
    while pending:
        chunk = pending.pop(0)
        got, started, rc, err = _spawn(chunk, timeout)
        for i, r in got.items():
            results[tuple(chunk[i])] = r
        if rc == 0 and len(got) == len(chunk):
            continue
        if started is None:  # died outside any case (import error, ...)
            started = len(got)
            if started >= len(chunk):
                continue
        culprit = chunk[started]
        alone, _, rc1, err1 = _spawn([culprit], case_timeout)
        if 0 in alone:
            results[tuple(culprit)] = ("wrong", f"failed only inside its batch (rc={rc}): "
                                                f"{err[-300:]}")
        elif rc1 is None:
            results[tuple(culprit)] = ("hang", f"no result within {case_timeout} s")
        else:
            results[tuple(culprit)] = ("crash", f"exit status {rc1}: {err1[-300:]}")
        if started + 1 < len(chunk):
            pending.insert(0, chunk[started + 1:])
    return results


def summary(results):
    counts = {}
    for outcome, _ in results.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def failures(results):
    return {k: v for k, v in results.items() if v[0] not in ("ok", "clean")}


# ------------------------------------------------------------------------------ the worker


UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")


def _peak_kib():
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss, not inherited from the
    parent at fork); ru_maxrss where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _worker():
    if not UNDER_ASAN:  # ASan reserves terabytes of address space for its shadow memory
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_LIMIT, ADDRESS_LIMIT))
    import fuzz_cases  # noqa: E402  (tests/ is on sys.path: this file's directory)
    cases = json.loads(sys.stdin.read())
    for i, (family, seed) in enumerate(cases):
        print(f"START {i}", flush=True)
        before = _peak_kib()
        try:
            outcome, detail = fuzz_cases.FAMILIES[family](seed)
        except MemoryError as e:
            outcome, detail = "blowup", f"MemoryError {e}"
        except fuzz_cases.Wrong as e:
            outcome, detail = "wrong", str(e)[:500]
        except CLEAN as e:
            outcome, detail = "clean", f"{type(e).__name__}: {str(e)[:200]}"
        except Exception as e:  # noqa: BLE001 - an undocumented exception is a finding
            outcome, detail = "wrong", f"unexpected {type(e).__name__}: {str(e)[:300]}"
        grew = _peak_kib() - before
        if grew > BLOWUP_KIB and outcome != "wrong" and not UNDER_ASAN:
            outcome, detail = "blowup", f"resident memory grew by {grew // 1024} MiB"
        print("DONE " + json.dumps([i, outcome, detail]), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    _worker()
