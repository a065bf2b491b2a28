"""Check of class-scale grading (part of ``make test-grading``), in build/check_scale/.

A synthetic class of 12 submissions over two notebooks (the reference, the untouched release,
wrong solutions from graders/audit_catalog.py, a submission that kills its kernel, one with
edited and deleted test cells, one whose notebook is not a notebook, one with stray files):

(1) graded with graders.batch at JOBS=2: every submission gets the score of its kind, the
    failing one has a reason in grades.csv, the others are unaffected; reports are written;
(2) a second run grades nothing (every submission resumed from its recorded hash), and
    touching one file regrades exactly that submission;
(3) the same scores as grading the submissions one by one with autograde_one in one course;
(4) the Gradescope zip of 03_quant_basics, unpacked into a scratch /autograder root, run by
    its run_autograder: valid results.json, full marks for the reference, 0 for the untouched
    release, the batch's partial score for a wrong solution (uploaded flattened).

Native modules come from build/native_cache, shared with graders/check_pipeline.py (the same
release sources), so this check compiles nothing after the pipeline check.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graders.audit_catalog import CATALOG, Patch  # noqa: E402
from graders.autograde import autograde_one, cell_scores  # noqa: E402
from graders.batch import NATIVE_CACHE, grade_class  # noqa: E402
from graders.build_cache import BuildCache  # noqa: E402
from graders.check_pipeline import (Report, _grade_id, make_submission,  # noqa: E402
                                    reference_notebook)
from graders.course import GRADEBOOK, REPO, SUBMITTED_DIR  # noqa: E402
from graders.gradescope import build_zip  # noqa: E402
from graders.release import release  # noqa: E402

CHECK = REPO / "build" / "check_scale"
NOTEBOOKS = ("01_save_load", "03_quant_basics")
KILL = Patch("r = np.rint(b / s)", "import os; os.kill(os.getpid(), 9)",
             file="needle/quant/reference.py")
MUT = {m.name: m for m in CATALOG}


def _class():
    """{(student, notebook): (kind, patches, notebook edit)} of the synthetic class."""
    def tamper(nb):
        for cell in nb.cells:
            if _grade_id(cell) == "test_quantize":
                cell.source = "pass  # the tests were removed"
        nb.cells = [c for c in nb.cells if _grade_id(c) != "test_per_channel"]
    return {
        ("reference", "01_save_load"): ("full", (), None),
        ("reference", "03_quant_basics"): ("full", (), None),
        ("untouched", "01_save_load"): ("zero", (), "release"),
        ("untouched", "03_quant_basics"): ("zero", (), "release"),
        ("w_trunc", "03_quant_basics"): ("partial", MUT["round_toward_zero"].patches, None),
        ("w_requant", "03_quant_basics"): ("partial", MUT["requantize_truncates"].patches, None),
        ("w_tensor", "03_quant_basics"): ("partial", MUT["per_tensor_weights"].patches, None),
        ("w_endian", "01_save_load"): ("partial", MUT["safetensors_big_endian"].patches, None),
        ("crash", "03_quant_basics"): ("crash", (KILL,), None),
        ("tamper", "03_quant_basics"): ("full", (), tamper),
        ("broken", "03_quant_basics"): ("error", (), "garbage"),
        ("stray", "01_save_load"): ("full", (), "stray"),
    }


def make_class(release_dir: Path, manifest: dict) -> dict:
    klass = _class()
    for (student, name), (_, patches, edit) in klass.items():
        files = [f for f in manifest["assignments"][name].get("library_files", [])
                 if f in manifest["student_files"]]
        if edit == "release":
            sub = CHECK / SUBMITTED_DIR / student / name
            sub.mkdir(parents=True, exist_ok=True)
            shutil.copy2(release_dir / "notebooks" / f"{name}.ipynb", sub)
            continue
        nb = reference_notebook(name, release_dir)
        if callable(edit):
            edit(nb)
        sub = make_submission(student, name, nb, files, patches, root=CHECK)
        if edit == "garbage":
            (sub / f"{name}.ipynb").write_text("this is not a notebook {")
        elif edit == "stray":      # files the grader must ignore
            (sub / "tests").mkdir()
            (sub / "tests" / "test_everything.py").write_text("assert False\n")
            (sub / "graders").mkdir()
            (sub / "graders" / "autograde.py").write_text("raise SystemExit(1)\n")
    return klass


def scores_of(jobs) -> dict:
    """{(student, notebook): (status, {cell: score})} of autograded cells ({} on an error)."""
    out = {}
    for j in jobs:
        status = j.status if j.status != "skipped" else j.resumed_status
        out[(j.student, j.assignment)] = (status, {} if status == "error" else
                                          {c[1]: c[2] or 0 for c in j.cells if c[4]})
    return out


def one_by_one(manifest: dict, cache: BuildCache, pairs, lane: int) -> dict:
    """Grade ``pairs`` in turn with autograde_one in one course root (CHECK/seq<lane>): one
    shared workspace and gradebook, the way graders.autograde grades."""
    seq = CHECK / f"seq{lane}"
    shutil.rmtree(seq, ignore_errors=True)
    shutil.copytree(CHECK / Path(GRADEBOOK).parent, seq / Path(GRADEBOOK).parent)
    shutil.copytree(CHECK / SUBMITTED_DIR, seq / SUBMITTED_DIR)
    out = {}
    for (student, name) in pairs:
        try:
            autograde_one(seq, student, name, manifest, native_cache=cache)
        except RuntimeError:
            out[(student, name)] = ("error", {})
            continue
        out[(student, name)] = ("ok", {k[1]: v[0] or 0 for k, v in
                                       cell_scores(seq, student, name).items() if v[2]})
    return out


def in_lanes(fn, items, lanes: int) -> list:
    """fn(items[k::lanes], k) for each lane k, the lanes concurrently (2 cores: 2 lanes)."""
    with cf.ThreadPoolExecutor(max_workers=lanes) as pool:
        return list(pool.map(lambda k: fn(items[k::lanes], k), range(lanes)))


def run_gradescope(zip_path: Path, student: str, flatten: bool) -> dict:
    """Unpack the zip into CHECK/gs/<student>/ (an /autograder root), upload the student's
    03 submission, run run_autograder, return results.json."""
    ag = CHECK / "gs" / student
    shutil.rmtree(ag, ignore_errors=True)
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(ag / "source")
    for p in ("run_autograder", "setup.sh"):
        os.chmod(ag / "source" / p, 0o755)
    src = CHECK / SUBMITTED_DIR / student / "03_quant_basics"
    dest = ag / "submission"
    dest.mkdir(parents=True)
    for f in src.rglob("*"):
        if f.is_file():
            target = dest / (f.name if flatten else f.relative_to(src))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
    env = {**os.environ, "AUTOGRADER_ROOT": str(ag), "AUTOGRADER_PYTHON": sys.executable,
           "NEEDLE_GRADING_CACHE": str(REPO / NATIVE_CACHE)}
    res = subprocess.run(["bash", str(ag / "source" / "run_autograder")], env=env,
                         capture_output=True, text=True)
    path = ag / "results" / "results.json"
    if res.returncode != 0 or not path.exists():
        raise RuntimeError(f"run_autograder failed ({res.returncode}): "
                           f"{(res.stdout + res.stderr)[-2000:]}")
    return json.loads(path.read_text())


def results_schema_errors(r: dict) -> list[str]:
    errs = []
    vis = {"hidden", "after_due_date", "after_published", "visible"}
    if not isinstance(r.get("tests"), list) or not r["tests"]:
        errs.append("no tests[]")
    for t in r.get("tests", []):
        for k, typ in (("name", str), ("score", float), ("max_score", float), ("output", str),
                       ("visibility", str)):
            if not isinstance(t.get(k), typ):
                errs.append(f"test {t.get('name')}: {k} is {t.get(k)!r}")
        if t.get("visibility") not in vis:
            errs.append(f"test {t.get('name')}: visibility {t.get('visibility')!r}")
    if not isinstance(r.get("output"), str) or r.get("visibility") not in vis:
        errs.append("top-level output/visibility")
    if abs(r.get("score", -1) - sum(t["score"] for t in r.get("tests", []))) > 1e-9:
        errs.append("score is not the sum of the tests' scores")
    return errs


def run(args) -> int:
    t_start = time.time()
    rep = Report()
    shutil.rmtree(CHECK, ignore_errors=True)
    CHECK.mkdir(parents=True)
    print("== release", flush=True)
    manifest = release(REPO, out=CHECK / "release", course_root=CHECK, names=NOTEBOOKS)
    klass = make_class(CHECK / "release", manifest)
    cache_dir = REPO / NATIVE_CACHE
    out_dir = CHECK / "output"

    # (1) the class, two at a time ------------------------------------------------------
    print(f"== (1) {len(klass)} submissions, JOBS={args.jobs}", flush=True)
    t0 = time.time()
    jobs = grade_class(CHECK, jobs=args.jobs, out_dir=out_dir, cache_dir=cache_dir,
                       progress=False)
    t_batch = time.time() - t0
    batch = scores_of(jobs)
    full = {}
    by_name = {(j.student, j.assignment): j for j in jobs}
    for (student, name), (kind, _, _) in klass.items():
        job = by_name[(student, name)]
        status, cells = batch[(student, name)]
        got, top = job.score, job.max_score
        if kind == "full":
            full[name] = top
        # A killed kernel costs at least the crashing tests; nbgrader may abort the notebook.
        ok = {"full": status == "ok" and cells and got == top,
              "zero": status == "ok" and cells and got == 0,
              "partial": status == "ok" and cells and 0 <= got < top,
              "crash": (status == "ok" and got < top) or (status == "error" and job.reason),
              "error": status == "error" and job.reason}[kind]
        rep.add(f"batch: {student}/{name} is {kind} ({status}, {got:g}/{top:g})", ok,
                job.reason)
    with open(out_dir / "grades.csv") as fh:
        rows = list(csv.DictReader(fh))
    bad = [r for r in rows if r["student"] == "broken"]
    rep.add("grades.csv: one row per (student, notebook, cell), the failure's rows say why",
            len(rows) == sum(len(j.cells) or 1 for j in jobs) and bad
            and all(r["status"] == "error" and r["reason"] for r in bad),
            f"{len(rows)} rows; failure reason: {bad[0]['reason'] if bad else None!r}")
    summary = (out_dir / "summary.md").read_text()
    rep.add("reports: summary table per notebook and score plot",
            all(n in summary for n in NOTEBOOKS) and (out_dir / "scores.png").stat().st_size
            > 1000, str(out_dir))

    # (2) resume -------------------------------------------------------------------------
    print("== (2) resume", flush=True)
    again = grade_class(CHECK, jobs=args.jobs, out_dir=out_dir, cache_dir=cache_dir,
                        progress=False)
    regraded = [j.name for j in again if j.status != "skipped"]
    rep.add("second run grades nothing (all resumed) and keeps the scores",
            not regraded and scores_of(again) == batch, f"regraded: {regraded}")
    nb = CHECK / SUBMITTED_DIR / "untouched" / "01_save_load" / "01_save_load.ipynb"
    nb.write_text(nb.read_text() + "\n")
    (CHECK / SUBMITTED_DIR / "untouched" / "01_save_load" / "notes.txt").write_text("x")
    third = grade_class(CHECK, jobs=args.jobs, out_dir=out_dir, cache_dir=cache_dir,
                        progress=False)
    regraded = sorted(j.name for j in third if j.status != "skipped")
    rep.add("a changed notebook regrades exactly that submission",
            regraded == ["untouched/01_save_load"] and scores_of(third) == batch,
            f"regraded: {regraded}")

    # (3) one by one -----------------------------------------------------------------------
    if not args.skip_sequential:
        print("== (3) one by one", flush=True)
        t0 = time.time()
        # Two independent one-by-one sequences side by side, to fit the time budget.
        seq = {}
        for part in in_lanes(lambda pairs, k: one_by_one(manifest, BuildCache(cache_dir),
                                                         pairs, k), list(klass), args.jobs):
            seq.update(part)
        t_seq = time.time() - t0
        diff = {k: (batch[k], seq[k]) for k in klass if batch[k] != seq[k]}
        rep.add(f"JOBS={args.jobs} gives the scores of grading one by one "
                f"({t_batch:.0f}s vs {t_seq:.0f}s)", not diff, f"differ: {diff}")

    # (4) Gradescope ------------------------------------------------------------------------
    print("== (4) Gradescope autograder", flush=True)
    zip_path = build_zip(CHECK, "03_quant_basics", CHECK / "gradescope")
    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
    shipped_bad = [n for n in names if "audit_catalog" in n or "/notebooks/03" in n
                   and "release" not in n]
    rep.add("zip holds setup.sh, run_autograder, release, graders, gradebook; no audit catalog",
            {"setup.sh", "run_autograder"} <= names and not shipped_bad
            and any(n.endswith(GRADEBOOK) for n in names), f"{len(names)} files")
    cases = [("reference", False, "full"), ("untouched", False, "zero"),
             ("w_trunc", True, "batch")]

    def gradescope_lane(part, _):
        out = []
        for student, flatten, _want in part:
            try:
                out.append((student, run_gradescope(zip_path, student, flatten)))
            except (RuntimeError, ValueError) as e:
                out.append((student, e))
        return out
    runs = dict(r for part in in_lanes(gradescope_lane, cases, args.jobs) for r in part)
    for student, flatten, want in cases:
        r = runs[student]
        if isinstance(r, Exception):
            rep.add(f"gradescope: {student}", False, str(r)[-600:])
            continue
        errs = results_schema_errors(r)
        top = sum(t["max_score"] for t in r["tests"])
        expect = {"full": full["03_quant_basics"], "zero": 0.0,
                  "batch": sum(batch[(student, "03_quant_basics")][1].values())}[want]
        hidden = [t["name"] for t in r["tests"] if t["visibility"] == "after_due_date"]
        rep.add(f"gradescope: {student} scores {r['score']:g}/{top:g} (expected {expect:g}); "
                f"{len(hidden)} tests after the due date",
                not errs and r["score"] == expect and top == full["03_quant_basics"]
                and "native build" in r["output"], "; ".join(errs))

    passed = sum(ok for _, ok, _ in rep.rows)
    print(f"\n{passed}/{len(rep.rows)} checks passed in {time.time() - t_start:.0f}s")
    print(f"grading at scale: {passed} passed, {len(rep.rows) - passed} failed")
    return 0 if rep.ok else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--skip-sequential", action="store_true")
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
