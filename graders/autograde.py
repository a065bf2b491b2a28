"""Grade every submission: ``python -m graders.autograde`` (``make autograde``).

A submission is ``submitted/<student>/<assignment>/``: the assignment notebook plus the
student's versions of library files at their repository paths (e.g.
``needle/quant/reference.py``, ``src/cpu/qgemm.cc``). For each (student, assignment):

1. a grading workspace (``build/grading/ws``) is synchronised with the student release
   (``release/``: stubs everywhere) and the student's library files listed in the release
   manifest are laid over it; any other file of the submission is ignored, so a student cannot
   replace tests or framework code. Only files whose content changed are rewritten, so the
   native build below recompiles just what differs from the previous submission;
2. the native backends are rebuilt from those files (CPU always; CUDA when a GPU is present,
   or, without one, when the assignment's student files include CUDA sources and nvcc exists:
   then for one architecture only, since the notebook tests the kernels' host emulation);
   a failed build is logged and the old modules are removed, so the notebook's tests fail
   instead of silently testing someone else's kernel;
3. ``nbgrader autograde`` runs the notebook with ``NEEDLE_ROOT`` pointing at the workspace (the
   notebook's setup cell imports needle from there). Test cells are restored from the gradebook
   (edited or deleted ones too), every cell runs with a timeout (graders/nbgrader_config.py).

Afterwards the scores go to ``graders/output/grades.csv`` (one row per student and assignment)
and ``graders/output/cell_grades.csv`` (one row per graded cell).
"""
from __future__ import annotations

import argparse
import csv
import filecmp
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .course import (AUTOGRADED_DIR, GRADEBOOK, REPO, SUBMITTED_DIR, load_manifest, nbgrader,
                     walk_repo)

OUTPUT = REPO / "graders" / "output"
WORKSPACE = "build/grading/ws"


def gpu_present() -> bool:
    if os.environ.get("NEEDLE_GRADE_CUDA") in ("0", "1"):
        return os.environ["NEEDLE_GRADE_CUDA"] == "1"
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True,
                              timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _sync_file(src: Path, dest: Path) -> bool:
    if dest.exists() and filecmp.cmp(src, dest, shallow=False):
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() or dest.is_symlink():
        dest.unlink()
    shutil.copy2(src, dest)
    os.utime(dest)  # a new mtime makes the incremental build recompile it
    return True


def prepare_workspace(release_dir: Path, ws: Path, submission: Path, student_files) -> list:
    """Make ``ws`` = release + the student's library files; return the overlaid paths."""
    wanted = {}
    for rel in walk_repo(release_dir):
        wanted[rel] = release_dir / rel
    overlaid = []
    for rel in student_files:
        cand = submission / rel
        if cand.is_file() and not cand.is_symlink():
            wanted[rel] = cand
            overlaid.append(rel)
    ws.mkdir(parents=True, exist_ok=True)
    for rel in walk_repo(ws):
        if rel not in wanted:
            (ws / rel).unlink()
    for rel, src in wanted.items():
        _sync_file(src, ws / rel)
    return overlaid


#: the one architecture of a CUDA build made only for the host emulation (no GPU present)
EMULATION_CUDA_ARCH = "75"


def nvcc_present() -> bool:
    return bool(shutil.which("nvcc") or os.environ.get("CUDACXX")
                or Path("/usr/local/cuda/bin/nvcc").exists())


def needs_cuda_build(manifest: dict, assignment: str) -> bool:
    """Whether the student files of ``assignment`` include CUDA sources (.cu / .cuh)."""
    files = manifest["assignments"].get(assignment, {}).get("library_files", [])
    student = set(manifest["student_files"])
    return any(f in student and f.endswith((".cu", ".cuh")) for f in files)


def build_native(ws: Path, log: Path, jobs: int, cuda: bool, emulate: bool = False) -> bool:
    """Rebuild the backends of the workspace incrementally; True on success.

    cuda: a GPU is present, build the CUDA backend for every architecture. emulate (no GPU):
    build it anyway, for one architecture, because the notebook tests its host emulation.
    Otherwise the CUDA module is removed from the workspace (an earlier build's module would
    hold an earlier student's kernel).
    The build is incremental (only sources whose content changed were rewritten), so after a
    successful build the modules match the current sources. After a failed one they are
    removed, so no test can pass against an older student's kernel."""
    if not (ws / "CMakeLists.txt").exists():
        return True
    build = ws / "build"
    with_cuda = cuda or emulate
    cuda_flag = "ON" if with_cuda else "OFF"
    cmds = []
    cache = build / "CMakeCache.txt"
    if not cache.exists() or f"NEEDLE_CUDA:BOOL={cuda_flag}" not in cache.read_text(errors="replace"):
        cmds.append(["cmake", "-S", str(ws), "-B", str(build),
                     f"-DPython_EXECUTABLE={sys.executable}", "-DCMAKE_BUILD_TYPE=Release",
                     f"-DNEEDLE_CUDA={cuda_flag}"]
                    + ([f"-DCMAKE_CUDA_ARCHITECTURES={EMULATION_CUDA_ARCH}"]
                       if emulate and not cuda else []))
    if not with_cuda:
        for so in (ws / "needle" / "backend_ndarray").glob("ndarray_backend_cuda*.so"):
            so.unlink()
    cmds.append(["cmake", "--build", str(build), "-j", str(jobs)])
    log.parent.mkdir(parents=True, exist_ok=True)
    ok = True
    with open(log, "w") as fh:
        for cmd in cmds:
            fh.write("$ " + " ".join(cmd) + "\n")
            fh.flush()
            if subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode != 0:
                ok = False
                break
    if not ok:
        for so in (ws / "needle" / "backend_ndarray").glob("*.so"):
            so.unlink()
    return ok


def find_submissions(root: Path, students=None, assignments=None):
    sub_root = root / SUBMITTED_DIR
    pairs = []
    if not sub_root.is_dir():
        return pairs
    for sdir in sorted(p for p in sub_root.iterdir() if p.is_dir()):
        if students and sdir.name not in students:
            continue
        for adir in sorted(p for p in sdir.iterdir() if p.is_dir()):
            if assignments and adir.name not in assignments:
                continue
            pairs.append((sdir.name, adir.name))
    return pairs


def autograde_one(root: Path, student: str, assignment: str, manifest: dict, *,
                  timeout: int | None = None, jobs: int = 2, cuda: bool | None = None,
                  build: bool = True, quiet: bool = True, native_cache=None) -> dict:
    """Grade one submission; returns {'build_ok': bool, 'overlaid': [...], 'seconds': float}.

    ``root`` is the course root: its gradebook, ``submitted/`` and workspace (``root/WORKSPACE``)
    are used, so a private root per job makes concurrent gradings independent.
    native_cache: a graders.build_cache.BuildCache that replaces the incremental rebuild."""
    t0 = time.time()
    root = Path(root).resolve()
    release_dir = Path(manifest["release_dir"])
    ws = root / WORKSPACE
    submission = root / SUBMITTED_DIR / student / assignment
    overlaid = prepare_workspace(release_dir, ws, submission, manifest["student_files"])
    build_ok = True
    if build:
        cuda = gpu_present() if cuda is None else cuda
        emulate = not cuda and needs_cuda_build(manifest, assignment) and nvcc_present()
        log = root / "build" / "grading" / "logs" / f"{student}-{assignment}-build.log"
        builder = native_cache.build if native_cache is not None else build_native
        build_ok = builder(ws, log, jobs, cuda, emulate)
        if not build_ok:
            print(f"  [{student}/{assignment}] native build FAILED (log: {log})")
    extra = [f"--Execute.timeout={timeout}"] if timeout else []
    # The data stays where the instructor's repository finds it (the workspace has none).
    data_dir = os.environ.get("NEEDLE_DATA_DIR") or str(REPO / "data")
    env = {"NEEDLE_ROOT": str(ws), "PYTHONDONTWRITEBYTECODE": "1", "NEEDLE_DATA_DIR": data_dir}
    res = nbgrader(["autograde", assignment, "--student", student, "--force"], root,
                   extra=extra, env=env, capture=quiet, check=False)
    if res.returncode != 0:
        tail = res.stdout[-3000:] if quiet and res.stdout else ""
        raise RuntimeError(f"nbgrader autograde {assignment} --student {student} failed:\n{tail}")
    return {"build_ok": build_ok, "overlaid": overlaid, "seconds": time.time() - t0,
            "output": res.stdout if quiet else None}


def cell_scores(root: Path, student: str, assignment: str) -> dict:
    """{(notebook, grade_id): (score or None, max_score, autograded)} from the gradebook."""
    from nbgrader.api import Gradebook
    root = Path(root).resolve()
    out = {}
    with Gradebook(f"sqlite:///{root / GRADEBOOK}") as gb:
        sub = gb.find_submission(assignment, student)
        for nb in sub.notebooks:
            for g in nb.grades:
                # autograded cells are code test cells; "why" answers are Markdown
                out[(nb.name, g.name)] = (g.score, g.max_score, g.cell.cell_type == "code")
    return out


def export_csv(root: Path, out_dir: Path = OUTPUT) -> tuple[Path, Path]:
    """Write grades.csv (per submission) and cell_grades.csv (per graded cell)."""
    from nbgrader.api import Gradebook
    root = Path(root).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ".gitignore").write_text("*\n")
    per_sub, per_cell = out_dir / "grades.csv", out_dir / "cell_grades.csv"
    with Gradebook(f"sqlite:///{root / GRADEBOOK}") as gb, \
            open(per_sub, "w", newline="") as f1, open(per_cell, "w", newline="") as f2:
        w1, w2 = csv.writer(f1), csv.writer(f2)
        w1.writerow(["student", "assignment", "score", "max_score", "auto_score",
                     "needs_manual_grade"])
        w2.writerow(["student", "assignment", "notebook", "cell", "score", "max_score"])
        for a in gb.assignments:
            for sub in a.submissions:
                auto = sum(g.auto_score or 0 for nb in sub.notebooks for g in nb.grades)
                w1.writerow([sub.student_id, a.name, f"{sub.score:g}", f"{sub.max_score:g}",
                             f"{auto:g}", sub.needs_manual_grade])
                for nb in sub.notebooks:
                    for g in nb.grades:
                        w2.writerow([sub.student_id, a.name, nb.name, g.name,
                                     "" if g.score is None else f"{g.score:g}", f"{g.max_score:g}"])
    return per_sub, per_cell


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Autograde every submission in submitted/.")
    ap.add_argument("--student", action="append", help="only these students (repeatable)")
    ap.add_argument("--assignment", action="append", help="only these assignments (repeatable)")
    ap.add_argument("--timeout", type=int, help="per-cell timeout in seconds (config: 900)")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("JOBS", "2")))
    ap.add_argument("--no-build", action="store_true", help="skip the native rebuild")
    args = ap.parse_args(argv)
    manifest = load_manifest(REPO)
    pairs = find_submissions(REPO, args.student, args.assignment)
    if not pairs:
        print(f"no submissions in {REPO / SUBMITTED_DIR} (expected submitted/<student>/<assignment>/)")
        return 0
    failed = 0
    for student, assignment in pairs:
        if assignment not in manifest["assignments"]:
            print(f"  [{student}/{assignment}] unknown assignment, skipped")
            continue
        try:
            info = autograde_one(REPO, student, assignment, manifest, timeout=args.timeout,
                                 jobs=args.jobs, build=not args.no_build)
        except RuntimeError as e:
            failed += 1
            print(e)
            continue
        scores = cell_scores(REPO, student, assignment)
        got = sum(s or 0 for s, _, _ in scores.values())
        total = sum(m for _, m, _ in scores.values())
        print(f"  [{student}/{assignment}] {got:g}/{total:g} points "
              f"(library files: {', '.join(info['overlaid']) or 'none'}; {info['seconds']:.0f}s)")
    per_sub, per_cell = export_csv(REPO)
    print(f"grades: {per_sub.relative_to(REPO)}, {per_cell.relative_to(REPO)} "
          f"(autograded notebooks in {AUTOGRADED_DIR}/)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
