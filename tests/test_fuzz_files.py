"""Seeded fuzzing of checkpoint loading (fuzz_harness.py): truncations, flipped header bytes,
hostile headers (huge shapes, bad dtypes, deep nesting, huge numbers), huge header lengths,
FIFOs, symlinks to devices and directories, trailing garbage; each case in a subprocess."""
import os

import fuzz_harness as H

SCALE = float(os.environ.get("NEEDLE_FUZZ_SCALE", "1"))


def test_fuzz_checkpoint_files():
    n = max(1, int(300 * SCALE))
    results = H.run_cases([("checkpoint_files", s) for s in range(n)])
    counts = H.summary(results)
    bad = H.failures(results)
    assert not bad, f"{counts}; first findings: {list(bad.items())[:5]}"
    assert counts.get("ok", 0) > n // 10 and counts.get("clean", 0) > n // 2, counts
    print(counts)
