"""Grading throughput: CPU seconds per notebook grading (every notebook) and per student,
gradings per minute per core, cold and warm, and the extrapolation to a whole course (300
students x 8 notebooks).

    python bench/bench_grading.py                       # all notebooks, 1 student, JOBS=1
    python bench/bench_grading.py --notebooks 01_save_load 03_quant_basics --students 4 --jobs 2
    python bench/bench_grading.py --skip-cold --reuse   # warm only, keep the last release
    python bench/bench_grading.py --notebooks 06_cuda_int8 --submission untouched  # stubs
    python bench/bench_grading.py --students 3 --submission unique   # each student compiles

Per notebook, the table says where a grading's CPU time goes (from the grading record of
graders/autograde.py and graders/notebook_executor.py): the workspace, the native build,
nbgrader's own work, the sandbox's set-up, the executor, the kernel's start and the cells
(the largest cell named). The per-phase figures are exact with ``--jobs 1``; with more jobs
the workspace and build phases also count the other jobs' children.

A synthetic class (the reference solution submitted by every student) is graded by
graders.batch in build/bench_grading/:

* cold: an empty native build cache (the release's modules are compiled once);
* warm: the same class regraded (``--force``) with the cache filled: no compiling at all.

Each job's own seconds (recorded by the batch) measure one core's work per notebook grading;
the wall time over JOBS concurrent gradings gives the throughput per core. Written to
bench/results/grading.json and grading.md; nothing passes or fails.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nbformat  # noqa: E402

from common import RESULTS_DIR, machine_info, write_json  # noqa: E402
from graders.batch import grade_class  # noqa: E402
from graders.check_pipeline import make_submission, reference_notebook  # noqa: E402
from graders.course import REPO, course_manifest, load_manifest  # noqa: E402
from graders.release import release  # noqa: E402
from graders.audit_fast import NATIVE_SUFFIXES  # noqa: E402

ROOT = REPO / "build" / "bench_grading"
COURSE = {"students": 300, "notebooks": 8}
GOAL_CORE_S_PER_STUDENT = 60


def _cpu_seconds() -> float:
    """CPU seconds of this process and of every finished child (nbgrader, kernels, builds)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_class(jobs: int, force: bool, cache: Path) -> dict:
    t0, c0 = time.time(), _cpu_seconds()
    done = grade_class(ROOT, jobs=jobs, force=force, cache_dir=cache, out_dir=ROOT / "output",
                       progress=True, quiet=True)
    wall, cpu = time.time() - t0, _cpu_seconds() - c0
    graded = [j for j in done if j.status != "skipped"]
    per, cpu_per, native = {}, {}, {}
    for j in graded:
        per.setdefault(j.assignment, []).append(j.seconds)
        b = breakdown(j.profile)
        cpu_per.setdefault(j.assignment, []).append(b)
        native[j.student] = native.get(j.student, 0.0) + b["native_build"]
    n = len(graded)
    # Per core: from CPU seconds (robust on a loaded machine) and from the wall time.
    return {"gradings": n, "failed": sum(j.status == "error" for j in graded),
            "wall_s": round(wall, 1), "jobs": jobs, "cpu_s": round(cpu, 1),
            "cpu_s_per_grading": round(cpu / n, 1) if n else None,
            "per_core_per_min": round(60 * n / cpu, 2) if n and cpu else None,
            "per_core_per_min_wall": round(n / (wall / 60) / jobs, 2) if n else None,
            "job_seconds_median": round(statistics.median(j.seconds for j in graded), 1)
            if graded else None,
            "job_seconds_by_notebook": {a: round(statistics.median(v), 1)
                                        for a, v in sorted(per.items())},
            "cpu_by_notebook": {a: median_breakdown(v) for a, v in sorted(cpu_per.items())},
            "native_build_by_student": {k: round(v, 1) for k, v in sorted(native.items())}}


def breakdown(profile: dict) -> dict:
    """CPU seconds of one grading by phase, from its record's profile (see module doc)."""
    ph = profile.get("phases_cpu", {})
    sandbox = profile.get("sandbox_cpu", 0.0)
    end = profile.get("executor_end_cpu", {"self": 0.0, "children": 0.0})
    cells = {int(k): v for k, v in profile.get("cells", {}).items()}
    kernel_start = sum(profile.get("kernel_start_cpu", []))
    top = max(cells, key=cells.get) if cells else None
    return {"total": round(sum(ph.values()), 2),
            "workspace": ph.get("workspace", 0.0), "native_build": ph.get("native_build", 0.0),
            "nbgrader_own": round(ph.get("nbgrader", 0.0) - sandbox, 2),
            "sandbox_setup": round(sandbox - end["self"] - end["children"], 2),
            "executor": end["self"], "kernel_start": round(kernel_start, 2),
            "cells": round(sum(cells.values()), 2), "replays": profile.get("replay_cpu", 0.0),
            "largest_cell": f"{top}: {cells[top]:.1f}" if top is not None else ""}


def median_breakdown(rows: list) -> dict:
    return {k: (round(statistics.median(r[k] for r in rows), 2) if k != "largest_cell"
                else rows[len(rows) // 2][k]) for k in rows[0]}


def per_student(warm: dict, notebooks) -> dict:
    """One student's CPU seconds for the notebooks measured (a course of all of them)."""
    by = warm["cpu_by_notebook"]
    total = sum(by[n]["total"] for n in notebooks if n in by)
    return {"notebooks": len([n for n in notebooks if n in by]), "core_s": round(total, 1),
            "goal_core_s": GOAL_CORE_S_PER_STUDENT, "within_goal": total <= GOAL_CORE_S_PER_STUDENT}


def extrapolate(warm: dict, cold: dict, unique: bool, cores: int = 16) -> dict:
    """Course time from the measured per-job seconds (the notebooks measured stand in for the
    eight). Native code: with ``unique`` submissions (every student's C++/CUDA files differ)
    each student's compiles were measured in the cold run, and the median over students (the
    first student of a slot also builds the slot's tree from scratch) is used; otherwise a
    student's compiles are taken as two full compiles of the release's modules (05's C++ and
    06's CUDA emulation), an upper bound."""
    n = COURSE["students"] * COURSE["notebooks"]
    job_s = warm["cpu_s_per_grading"]
    # what the cold run spent beyond the warm one: every compile (the release's modules, and
    # with unique submissions every student's too)
    build_s = max(0.0, cold["cpu_s"] - warm["cpu_s"] * cold["gradings"] / warm["gradings"]) \
        if cold else 0.0
    measured = unique and cold and cold.get("native_build_by_student")
    if measured:
        student_s = statistics.median(cold["native_build_by_student"].values())
        how = ("each student's own compiles, measured (median over students; the cache "
               "holds nothing of theirs, the slot's build tree is reused incrementally)")
    else:
        student_s = 2 * build_s        # 05 (C++) and 06 (CUDA emulation) compile student code
        how = ("a student's compiles taken as two full compiles of the release's modules "
               "(an upper bound: the cache and incremental builds recompile less)")
    core_s = n * job_s + COURSE["students"] * student_s
    return {"gradings": n, "core_hours": round(core_s / 3600, 2),
            "cold_compile_cpu_s": round(build_s, 0),
            f"wall_hours_{cores}_cores": round(core_s / cores / 3600, 2),
            "one_student_8_notebooks_core_s": round(8 * job_s, 0),
            "gradescope_per_submission_s": round(8 * job_s + student_s, 0),
            "student_compile_cpu_s": round(student_s, 0), "note": how}


def make_native_unique(student_dir: Path, student: str) -> int:
    """Append a comment naming ``student`` to every C++/CUDA file of a submission, so that
    no two students share a native build (as in a real class). Returns the files changed."""
    changed = 0
    for path in sorted(Path(student_dir).rglob("*")):
        if path.is_file() and path.suffix in NATIVE_SUFFIXES:
            path.write_text(path.read_text() + f"\n// submitted by {student}\n")
            changed += 1
    return changed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--notebooks", nargs="*",
                    default=[n["id"] for n in course_manifest().NOTEBOOKS])
    ap.add_argument("--students", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--skip-cold", action="store_true", help="keep the native cache")
    ap.add_argument("--submission", choices=("reference", "unique", "untouched"),
                    default="reference",
                    help="what every student submits: the reference solution, the reference "
                         "with every C++/CUDA file made the student's own (a comment: each "
                         "student compiles, as in a real class), or the release untouched "
                         "(stubs: no native file of the student's own)")
    ap.add_argument("--reuse", action="store_true",
                    help="keep the release and submissions of the last run (same notebooks)")
    args = ap.parse_args(argv)
    reuse = args.reuse and (ROOT / "release").is_dir()
    if not reuse:
        shutil.rmtree(ROOT, ignore_errors=True)
        ROOT.mkdir(parents=True)
    manifest = release(REPO, out=ROOT / "release", course_root=ROOT, names=args.notebooks) \
        if not reuse else load_manifest(ROOT)
    for name in ([] if reuse else args.notebooks):
        files = [f for f in manifest["assignments"][name].get("library_files", [])
                 if f in manifest["student_files"]]
        if args.submission in ("reference", "unique"):
            nb = reference_notebook(name, ROOT / "release")
        else:
            nb = nbformat.read(str(ROOT / "release" / "notebooks" / f"{name}.ipynb"), 4)
        for k in range(args.students):
            sub = make_submission(f"s{k:03d}", name, nb, files, root=ROOT,
                                  release_dir=ROOT / "release",
                                  stub_files=files if args.submission == "untouched" else ())
            if args.submission == "unique":
                make_native_unique(sub, f"s{k:03d}")
    cache = ROOT / "native_cache" if not args.skip_cold else REPO / "build" / "native_cache"
    info = machine_info() if callable(machine_info) else {}
    cold = None if args.skip_cold else run_class(args.jobs, True, cache)
    warm = run_class(args.jobs, True, cache)
    out = {"machine": info, "load_average": os.getloadavg(), "notebooks": args.notebooks,
           "submission": args.submission,
           "students": args.students, "cold": cold, "warm": warm,
           "course": extrapolate(warm, cold, args.submission == "unique"),
           "per_student": per_student(warm, args.notebooks)}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS_DIR / "grading.json", out)
    lines = ["| run | gradings | JOBS | wall s | CPU s per grading | gradings/min/core (CPU) "
             "| gradings/min/core (wall) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for label, r in (("cold", cold), ("warm", warm)):
        if r:
            lines.append(f"| {label} | {r['gradings']} | {r['jobs']} | {r['wall_s']} | "
                         f"{r['cpu_s_per_grading']} | {r['per_core_per_min']} | "
                         f"{r['per_core_per_min_wall']} |")
    lines += ["", "CPU seconds per notebook grading (warm, median over students):", "",
              "| notebook | total | workspace | native build | nbgrader | sandbox set-up | "
              "executor | kernel start | cells | replays | largest cell (index: s) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, b in warm["cpu_by_notebook"].items():
        lines.append(f"| {name} | {b['total']} | {b['workspace']} | {b['native_build']} | "
                     f"{b['nbgrader_own']} | {b['sandbox_setup']} | {b['executor']} | "
                     f"{b['kernel_start']} | {b['cells']} | {b['replays']} | "
                     f"{b['largest_cell']} |")
    ps = out["per_student"]
    lines += ["", f"one student, {ps['notebooks']} notebooks: {ps['core_s']} core-s "
              f"(goal <= {ps['goal_core_s']} core-s: {'met' if ps['within_goal'] else 'NOT met'})"]
    c = out["course"]
    if cold and cold.get("native_build_by_student"):
        lines += ["", "native build CPU s per student (cold run): " + ", ".join(
            f"{k} {v:g}" for k, v in cold["native_build_by_student"].items())]
    lines += ["", f"300 students x 8 notebooks: {c['core_hours']} core-hours, "
              f"{c['wall_hours_16_cores']} h on 16 cores; one student's 8 notebooks "
              f"{c['one_student_8_notebooks_core_s']:g} core-s plus "
              f"{c['student_compile_cpu_s']:g} core-s of their native builds ({c['note']}); "
              f"Gradescope (one container per submission, in parallel): "
              f"~{c['gradescope_per_submission_s']:g} s per submission plus the container "
              "start."]
    (RESULTS_DIR / "grading.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps(out["course"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
