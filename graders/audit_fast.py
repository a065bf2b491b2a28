"""The wrong-solution audit, fast: every mutation of graders/audit_catalog.py is run against the
notebook's own test cells (visible and hidden) in one fresh interpreter per mutation, without
nbgrader or a kernel (``python -m graders.audit_fast``, ``make audit``).

For each notebook the instructor notebook's code cells run in order in one namespace (IPython
magics dropped); each test cell passes when it raises nothing. A mutation is applied to a
hard-linked copy of the reference workspace (the release with the reference library files and
the instructor's built backends); it is caught when a test cell that passes on the reference
fails on it. C++/CUDA mutations need a native rebuild of that copy (minutes): they run only
with ``--native`` (``make audit``). What this shows is that the tests pin each rule; that
nbgrader grades the same cells the same way is the pipeline check's job.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nbformat  # noqa: E402

from graders.audit_catalog import CATALOG, Mutation  # noqa: E402
from graders.course import REPO, walk_repo  # noqa: E402

NATIVE_SUFFIXES = (".cc", ".cu", ".cuh", ".h", ".cpp")
NOT_REACHED = "not reached (an earlier failure or a crash)"
#: a test the run never reached because it ran out of time: a hang or a slow mutant shows
#: nothing about whether the tests pin the rule, so it is never counted as caught
TIMED_OUT = "not reached (the run timed out)"

RUNNER = r'''
import json, sys
cells = json.load(open(sys.argv[1]))
stop_on = set(json.loads(sys.argv[3]))     # a failure of one of these ends the run (caught)
out = open(sys.argv[2], "w")
ns = {"__name__": "__main__", "display": print}
for role, gid, src in cells:
    try:
        exec(compile(src, f"<cell {gid}>", "exec"), ns)
        ok, err = True, ""
    except BaseException as e:  # noqa: BLE001 - a failing cell is a result
        ok, err = False, f"{type(e).__name__}: {str(e)[:200]}"
    if role == "test":
        out.write(json.dumps([gid, ok, err]) + "\n")
        out.flush()
        if not ok and gid in stop_on:
            break
'''


def notebook_cells(name, cell_patches=()):
    """[(role, grade_id, source)] of the instructor notebook, magics dropped, patches applied."""
    nb = nbformat.read(str(REPO / "notebooks" / f"{name}.ipynb"), as_version=4)
    cells = []
    for i, c in enumerate(nb.cells):
        if c.cell_type != "code":
            continue
        nbg = c.metadata.get("nbgrader", {})
        gid = nbg.get("grade_id") or f"cell{i}"
        role = "test" if nbg.get("grade") and not nbg.get("solution") else "code"
        src = c.source
        for p in cell_patches:
            if p.cell == (name, gid):
                if src.count(p.old) != 1:
                    raise ValueError(f"patch text occurs {src.count(p.old)} times in {gid}: "
                                     f"{p.old!r}")
                src = src.replace(p.old, p.new)
        # the audit builds the backend itself (the reference's modules, or a rebuild per C++/CUDA
        # mutation): a notebook's own rebuild() call (a full `make build`) is dropped
        src = "\n".join(line for line in src.splitlines()
                        if not line.lstrip().startswith(("%", "!")) and line.strip() != "rebuild()")
        cells.append((role, gid, src))
    return cells


def reference_workspace(dest: Path, release_dir: Path, student_files):
    """The release (or the repository itself) with the reference library files and the
    instructor's built modules."""
    if dest.exists():
        shutil.rmtree(dest)
    for rel in walk_repo(release_dir):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(release_dir / rel, dest / rel)
    for rel in student_files:
        if (REPO / rel).is_file():
            shutil.copy2(REPO / rel, dest / rel)
    for so in (REPO / "needle" / "backend_ndarray").glob("*.so"):
        shutil.copy2(so, dest / "needle" / "backend_ndarray" / so.name)
    return dest


def _link_copy(src: Path, dest: Path):
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, copy_function=os.link, ignore=shutil.ignore_patterns("build"))


def run_tests(ws: Path, name: str, cell_patches=(), timeout=600, stop_on=()):
    """{test grade_id: (passed, error)} of notebook ``name`` run against workspace ``ws``;
    the run ends at the first failing test of ``stop_on`` (the rest count as failed)."""
    cells = notebook_cells(name, cell_patches)
    with tempfile.TemporaryDirectory(prefix="nq-audit-") as tmp:
        cj, rj = Path(tmp, "cells.json"), Path(tmp, "results.jsonl")
        cj.write_text(json.dumps(cells))
        env = {**os.environ, "NEEDLE_ROOT": str(ws), "MPLBACKEND": "Agg", "NEEDLE_SETUP_BUILD": "0",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(ws)}
        unreached = NOT_REACHED
        try:
            subprocess.run([sys.executable, "-c", RUNNER, str(cj), str(rj),
                            json.dumps(sorted(stop_on))], cwd=ws / "notebooks",
                           env=env, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            unreached = f"{TIMED_OUT[:-1]} after {timeout} s)"
        got = {}
        if rj.exists():
            for line in rj.read_text().splitlines():
                gid, ok, err = json.loads(line)
                got[gid] = (ok, err)
    for role, gid, _ in cells:   # a crash or a timeout fails every test it did not reach
        if role == "test" and gid not in got:
            got[gid] = (False, unreached)
    return got


def apply_file_patches(ws: Path, patches):
    for p in patches:
        if p.file is None:
            continue
        path = ws / p.file
        text = path.read_text()
        if p.old == "":
            text += p.new
        else:
            if text.count(p.old) != 1:
                raise ValueError(f"patch text occurs {text.count(p.old)} times in {p.file}: "
                                 f"{p.old!r}")
            text = text.replace(p.old, p.new)
        path.unlink()            # hard link: never write through to the reference copy
        path.write_text(text)


def is_native(m: Mutation) -> bool:
    return any(p.file and p.file.endswith(NATIVE_SUFFIXES) for p in m.patches)


def is_cuda(m: Mutation) -> bool:
    return any(p.file and p.file.endswith((".cu", ".cuh")) for p in m.patches)


def build(ws: Path, log: Path, cuda: bool) -> bool:
    cmds = [["cmake", "-S", str(ws), "-B", str(ws / "build"), f"-DPython_EXECUTABLE={sys.executable}",
             "-DCMAKE_BUILD_TYPE=Release", f"-DNEEDLE_CUDA={'ON' if cuda else 'OFF'}",
             # built once per mutation and only tested: link-time optimisation is wasted time
             "-DCMAKE_INTERPROCEDURAL_OPTIMIZATION=OFF"]
            + (["-DCMAKE_CUDA_ARCHITECTURES=75"] if cuda else []),
            ["cmake", "--build", str(ws / "build"), "-j", os.environ.get("JOBS", "2")]]
    with open(log, "w") as fh:
        return all(subprocess.run(c, stdout=fh, stderr=subprocess.STDOUT).returncode == 0
                   for c in cmds)


def _mutant(m, ref_ws, ref, work, slot):
    """(caught test ids, error) of one Python-level mutation, in work/mutant-<slot>."""
    ws = work / f"mutant-{slot}"
    _link_copy(ref_ws, ws)
    apply_file_patches(ws, m.patches)
    return _run_notebooks(m, ws, ref)


def _run_notebooks(m, ws, ref):
    """(caught test ids, note) of mutation ``m`` applied in workspace ``ws``."""
    caught, notes = [], []
    for name in m.notebooks:
        passing = [g for g, (ok, _) in ref[name].items() if ok]
        got = run_tests(ws, name, [p for p in m.patches if p.cell], stop_on=passing)
        found, note = _caught(name, passing, got)
        caught += found
        notes += [note] if note else []
        if caught:
            break
    return caught, "; ".join(notes)


def _caught(name, passing, got):
    """(failed test ids, note): the tests (of those passing on the reference) that failed.
    Tests after the first failure were not run: they are named only when the run crashed
    before any failure. A run that timed out before any test failed catches nothing."""
    failed = [g for g in passing if not got.get(g, (False, NOT_REACHED))[0]]
    real = [g for g in failed if not got[g][1].startswith("not reached")]
    if real:
        return [f"{name}:{g}" for g in real], ""
    if failed and got[failed[0]][1].startswith(TIMED_OUT[:-1]):
        return [], f"TIMED OUT in {name} before any test failed ({got[failed[0]][1]}): not caught"
    return [f"{name}:{g}" for g in failed[:1]], ""


def _native_mutant(m, ref_ws, ref, work):
    ws = work / "native"
    if not ws.exists():
        shutil.copytree(ref_ws, ws, ignore=shutil.ignore_patterns("build"))
    saved = {p.file: (ws / p.file).read_text() for p in m.patches if p.file}
    try:
        apply_file_patches(ws, m.patches)
        cuda = is_cuda(m)
        if not build(ws, work / f"build-{m.name}.log", cuda):
            return [], "native build failed"
        return _run_notebooks(m, ws, ref)
    finally:
        for rel, text in saved.items():
            (ws / rel).unlink()
            (ws / rel).write_text(text)


def audit(release_dir: Path, student_files, mutations, work: Path, native=False, jobs=2,
          log=print):
    """(rows (mutation, caught test ids or None, note), reference failures)."""
    from concurrent.futures import ThreadPoolExecutor
    ref_ws = reference_workspace(work / "reference", release_dir, student_files)
    names = sorted({n for m in mutations for n in m.notebooks})
    ref = {}
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        for name, res in zip(names, pool.map(lambda n: run_tests(ref_ws, n), names)):
            ref[name] = res
    results = {}

    def one(args):
        k, m = args
        t0 = time.time()
        try:
            out = _mutant(m, ref_ws, ref, work, k % max(1, jobs))
        except (ValueError, OSError) as e:
            out = (None, str(e))
        log(f"  {m.name}: {'caught by ' + ', '.join(out[0][:2]) if out[0] else out[1] or 'NOT CAUGHT'}"
            f" ({time.time() - t0:.0f}s)")
        return m.name, out
    python_muts = [m for m in mutations if not is_native(m)]
    # one worker per slot: slot k % jobs is used by one thread at a time
    for start in range(0, len(python_muts), max(1, jobs)):
        batch = list(enumerate(python_muts[start:start + max(1, jobs)]))
        with ThreadPoolExecutor(max(1, jobs)) as pool:
            results.update(dict(pool.map(one, batch)))
    # C++ ones first, then CUDA ones: switching NEEDLE_CUDA reconfigures and rebuilds all
    for m in sorted(mutations, key=is_cuda):
        if is_native(m):
            if not native:
                results[m.name] = (None, "C++/CUDA: runs in make audit (--native)")
                continue
            t0 = time.time()
            try:
                results[m.name] = _native_mutant(m, ref_ws, ref, work)
            except (ValueError, OSError) as e:
                results[m.name] = (None, str(e))
            log(f"  {m.name}: {results[m.name]} ({time.time() - t0:.0f}s)")
    rows = [(m, *results[m.name]) for m in mutations]
    broken_ref = {f"{n}:{g}": e for n, r in ref.items() for g, (ok, e) in r.items() if not ok}
    return rows, broken_ref


def print_table(rows):
    """One table per exercise (the mutation's ``exercise``), then the totals."""
    by_ex = {}
    for m, caught, err in rows:
        by_ex.setdefault(getattr(m, "exercise", "") or m.notebooks[0], []).append((m, caught, err))
    for ex in sorted(by_ex):
        print(f"\n  {ex}")
        for m, caught, err in by_ex[ex]:
            verdict = ("caught by " + ", ".join(c.split(":")[1] for c in caught[:3])) if caught \
                else (err or "NOT CAUGHT")
            print(f"    {m.name:34} {verdict}")
    ran = [r for r in rows if r[1] is not None]
    caught = sum(bool(r[1]) for r in ran)
    print(f"\n  wrong solutions caught: {caught}/{len(ran)} run ({len(rows) - len(ran)} not run)")
    return caught, len(ran)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--native", action="store_true", help="also C++/CUDA mutations (rebuilds)")
    ap.add_argument("--only", action="append", help="only this mutation (repeatable)")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("JOBS", "2")))
    args = ap.parse_args(argv)
    work = REPO / "build" / "audit"
    work.mkdir(parents=True, exist_ok=True)
    # the reference workspace is the repository's own release-able files (with solutions)
    muts = [m for m in CATALOG if not args.only or m.name in args.only]
    rows, broken = audit(REPO, [], muts, work, native=args.native, jobs=args.jobs)
    caught, ran = print_table(rows)
    if broken:
        print(f"  reference fails tests: {broken}")
    return 0 if caught == ran and not broken else 1


if __name__ == "__main__":
    sys.exit(main())
