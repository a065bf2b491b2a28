"""Grade every submission: ``python -m graders.autograde`` (``make autograde``).

A submission is ``submitted/<student>/<assignment>/``: the assignment notebook plus the
student's versions of library files at their repository paths (e.g.
``needle/quant/reference.py``, ``src/cpu/qgemm.cc``). For each (student, assignment):

1. a grading workspace (``build/grading/ws``) is synchronised with the student release
   (``release/``: stubs everywhere) and the library files of the grading policy
   (graders/workspace.py) are laid over it: the student's code for the exercises of this
   notebook, the course's reference for earlier notebooks' exercises (one early mistake does
   not cascade), stubs for later ones. Any other file of the submission is ignored, so a
   student cannot replace tests or framework code. A file of this notebook's exercises that
   the submission lacks is named in the report. Only files whose content changed are
   rewritten, so the native build below recompiles just what differs from the previous
   submission;
2. the native backends are rebuilt from those files (CPU always; CUDA when a GPU is present,
   or, without one, when the assignment's student files include CUDA sources: then only the
   kernels' host emulation, compiled by the host compiler without nvcc, since that is what the
   notebook tests there);
   a failed build is logged and the old modules are removed, so the notebook's tests fail
   instead of silently testing someone else's kernel;
3. ``nbgrader autograde`` runs the notebook with ``NEEDLE_ROOT`` pointing at the workspace (the
   notebook's setup cell imports needle from there). Test cells are restored from the gradebook
   (edited or deleted ones too), every cell runs with a timeout (graders/nbgrader_config.py).

Each grading writes ``autograded/<student>/<assignment>/grade_report.json`` (files taken from
the student, missing files with their exercises, exercises whose stub still raised). The
scores go to ``graders/output/grades.csv`` (one row per student and assignment, with the
report's summary in ``notes``) and ``graders/output/cell_grades.csv`` (one row per graded
cell).
"""
from __future__ import annotations

import argparse
import ast
import atexit
import csv
import filecmp
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from .course import (AUTOGRADED_DIR, CONFIG, GRADEBOOK, NB_RELEASE_DIR, REPO, SUBMITTED_DIR,
                     course_manifest, load_manifest, tool_path, unpack_submission, walk_repo)
from .nbgrader_runner import NbgraderServer
from .sandbox import SANDBOX_RW, Limits, SandboxUnavailable, cpu_seconds, probe, run_isolated
from .workspace import grading_files, plain_file, unwritten_exercises

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


def _sync_bytes(data: bytes, dest: Path) -> bool:
    if dest.is_file() and not dest.is_symlink() and dest.read_bytes() == data:
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() or dest.is_symlink():
        dest.unlink()
    dest.write_bytes(data)
    return True


def prepare_workspace(release_dir: Path, ws: Path, submission: Path, student_files,
                      files: dict | None = None) -> list:
    """Make ``ws`` = release + the library files of the grading policy; return the paths
    taken from the student.

    files: {repository path: bytes} from graders.workspace.grading_files (the policy: the
    student's code for this notebook's exercises, the reference for earlier ones). Without it,
    every file of ``student_files`` present in the submission is laid over the release."""
    wanted = {}
    for rel in walk_repo(release_dir):
        wanted[rel] = release_dir / rel
    overlaid = []
    if files is None:
        for rel in student_files:
            cand = submission / rel
            if plain_file(submission, rel):
                wanted[rel] = cand
                overlaid.append(rel)
    else:
        wanted.update(files)
    ws.mkdir(parents=True, exist_ok=True)
    for rel in walk_repo(ws):
        if rel not in wanted:
            (ws / rel).unlink()
    for rel, src in wanted.items():
        if isinstance(src, bytes):
            _sync_bytes(src, ws / rel)
        else:
            _sync_file(src, ws / rel)
    return overlaid



def nvcc_present() -> bool:
    return bool(shutil.which("nvcc") or os.environ.get("CUDACXX")
                or Path("/usr/local/cuda/bin/nvcc").exists())


def needs_cuda_build(manifest: dict, assignment: str) -> bool:
    """Whether the student files of ``assignment`` include CUDA sources (.cu / .cuh)."""
    info = manifest["assignments"].get(assignment, {})
    files = info.get("own_files", info.get("library_files", []))
    student = set(manifest["student_files"])
    return any(f in student and f.endswith((".cu", ".cuh")) for f in files)


def build_native(ws: Path, log: Path, jobs: int, cuda: bool, emulate: bool = False,
                 allow_unisolated: bool = False) -> bool:
    """Rebuild the backends of the workspace incrementally, in the sandbox; True on success.

    cuda: a GPU is present, build the CUDA backend for every architecture. emulate (no GPU):
    build only its host emulation, with the host compiler (CMake's NEEDLE_EMULATION_HOST: no
    nvcc needed, a fraction of a CUDA build's time), because the notebook tests the kernels'
    tile code through it. Otherwise the CUDA module is removed from the workspace (an earlier
    build's module would hold an earlier student's kernel).
    The build runs in graders/sandbox.py's sandbox (the compiler reads student sources, which
    could #include any file it can see), with the workspace as its writable area at
    ``SANDBOX_RW`` (so the CMake cache's paths are the same in every build); the build outputs
    are copied back. It is incremental (only sources whose content changed were rewritten), so
    after a successful build the modules match the current sources. After a failed one they
    are removed, so no test can pass against an older student's kernel."""
    if not (ws / "CMakeLists.txt").exists():
        return True
    build = ws / "build"
    with_cuda = cuda or emulate
    cuda_flag = "ON" if cuda else "OFF"
    host_flag = "ON" if emulate and not cuda else "OFF"
    cmds = []
    cache = build / "CMakeCache.txt"
    cached = cache.read_text(errors="replace") if cache.exists() else ""
    if any(entry not in cached for entry in (
            f"NEEDLE_CUDA:BOOL={cuda_flag}", f"NEEDLE_EMULATION_HOST:STRING={host_flag}",
            f"CMAKE_HOME_DIRECTORY:INTERNAL={SANDBOX_RW}")):
        if build.exists():
            shutil.rmtree(build)
        cmds.append(["cmake", "-S", SANDBOX_RW, "-B", f"{SANDBOX_RW}/build",
                     f"-DPython_EXECUTABLE={sys.executable}", "-DCMAKE_BUILD_TYPE=Release",
                     f"-DNEEDLE_CUDA={cuda_flag}", f"-DNEEDLE_EMULATION_HOST={host_flag}",
                     # no link-time optimisation: a grading build is compiled once and only
                     # tested, never timed, and LTO's link step is most of its CPU time
                     "-DCMAKE_INTERPROCEDURAL_OPTIMIZATION=OFF"])
    if not with_cuda:
        for so in (ws / "needle" / "backend_ndarray").glob("ndarray_backend_cuda*.so"):
            so.unlink()
    cmds.append(["cmake", "--build", f"{SANDBOX_RW}/build", "-j", str(jobs)])
    parts = []
    for c in cmds:
        line = " ".join(shlex.quote(a) for a in c)
        parts.append(f"echo {shlex.quote('$ ' + line)} && {line}")
    script = " && ".join(parts)
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        res = run_isolated(["/bin/sh", "-c", script], rw_dir=ws,
                           limits=Limits(wall_seconds=1800, cpu_seconds=3600,
                                         output_bytes=4 << 20),
                           env={"CUDACXX": os.environ["CUDACXX"]} if os.environ.get("CUDACXX")
                           else None, allow_unisolated=allow_unisolated)
        log.write_bytes(res.stdout + res.stderr)
        ok = res.returncode == 0
    except (SandboxUnavailable, RuntimeError) as e:
        log.write_text(f"native build not run: {e}\n")
        ok = False
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


RECORDS = "build/grading/records"


def record_path(root: Path, student: str, assignment: str) -> Path:
    """The grading record of one submission: isolation, repairs, events, errors (JSON)."""
    return Path(root) / RECORDS / f"{student}--{assignment}.json"


def autograde_one(root: Path, student: str, assignment: str, manifest: dict, *,
                  timeout: int | None = None, jobs: int = 2, cuda: bool | None = None,
                  build: bool = True, quiet: bool = True, allow_unisolated: bool = False,
                  native_cache=None) -> dict:
    """Grade one submission; returns {'build_ok', 'overlaid', 'seconds', 'record', 'report',
    'output' (nbgrader's output when quiet)}.

    Refuses (SandboxUnavailable) when this machine cannot isolate the run, unless
    ``allow_unisolated``. The record (also in ``record_path``) says which isolation the run
    got, what was repaired in the notebook, and why a grading failed.
    ``root`` is the course root: its gradebook, ``submitted/`` and workspace (``root/WORKSPACE``)
    are used, so a private root per job makes concurrent gradings independent.
    native_cache: a graders.build_cache.BuildCache that replaces the incremental rebuild."""
    t0, cpu = time.time(), [cpu_seconds()]
    phases = {}

    def phase(name):
        now = cpu_seconds()
        phases[name] = round(now["self"] - cpu[0]["self"] + now["children"]
                             - cpu[0]["children"], 2)
        cpu[0] = now
    root = Path(root).resolve()
    pr = probe()
    if not pr["isolated"] and not allow_unisolated:
        raise SandboxUnavailable(f"refusing to grade {student}/{assignment} without isolation "
                                 f"({pr['reason']}); --allow-unisolated overrides")
    release_dir = Path(manifest["release_dir"])
    ws = root / WORKSPACE
    submission = root / SUBMITTED_DIR / student / assignment
    if not (submission / f"{assignment}.ipynb").is_file():
        raise RuntimeError(f"[{student}/{assignment}] the submission has no {assignment}.ipynb: "
                           f"nothing graded")
    rec_path = record_path(root, student, assignment)
    rec_path.parent.mkdir(parents=True, exist_ok=True)
    if rec_path.exists():
        rec_path.unlink()
    reference_dir = Path(manifest.get("reference_dir") or REPO)
    files, report = grading_files(assignment, release_dir, reference_dir, submission)
    unpack_problems = submission / "UNPACK_PROBLEMS.txt"
    if unpack_problems.is_file():
        report["notes"] += unpack_problems.read_text(errors="replace").splitlines()
    prepare_workspace(release_dir, ws, submission, manifest["student_files"], files)
    overlaid = report["from_student"]
    phase("workspace")
    build_ok = True
    if build:
        cuda = gpu_present() if cuda is None else cuda
        cuda = cuda and nvcc_present()     # a GPU without nvcc: the host emulation at least
        emulate = not cuda and needs_cuda_build(manifest, assignment)
        log = root / "build" / "grading" / "logs" / f"{student}-{assignment}-build.log"
        builder = native_cache.build if native_cache is not None else build_native
        build_ok = builder(ws, log, jobs, cuda, emulate, allow_unisolated)
        if not build_ok:
            print(f"  [{student}/{assignment}] native build FAILED (log: {log})")
    phase("native_build")
    # The data stays where the instructor's repository finds it (the workspace has none); the
    # sandbox binds it read-only.
    data_dir = os.environ.get("NEEDLE_DATA_DIR") or str(REPO / "data")
    env = {"NEEDLE_ROOT": str(ws), "PYTHONDONTWRITEBYTECODE": "1", "NEEDLE_DATA_DIR": data_dir,
           "NEEDLE_SETUP_BUILD": "0",   # the notebook's setup cell must not rebuild
           # the library-tests cell's property tests at grading's example count (conftest.py)
           "NEEDLE_TEST_PROFILE": "grading",
           "NQ_GRADING_WS": str(ws), "NQ_GRADING_RECORD": str(rec_path),
           "NQ_RELEASE_NOTEBOOKS": str(root / NB_RELEASE_DIR / assignment),
           "NQ_ALLOW_UNISOLATED": "1" if allow_unisolated else "0"}
    if timeout:
        env["NQ_CELL_TIMEOUT"] = str(timeout)
    res = run_nbgrader(["autograde", assignment, "--student", student, "--force"], root,
                       env=env, capture=quiet)
    phase("nbgrader")
    record = json.loads(rec_path.read_text()) if rec_path.exists() else {}
    if res.cpu_s is not None:      # the preloaded server's child: not our child's CPU time
        phases["nbgrader"] = round(phases["nbgrader"] + res.cpu_s, 2)
    record.setdefault("profile", {})["phases_cpu"] = phases
    record.update({"student": student, "assignment": assignment, "build_ok": build_ok,
                   "overlaid": overlaid})
    if res.returncode != 0:
        tail = res.stdout[-3000:] if quiet and res.stdout else ""
        record.setdefault("errors", []).append(f"nbgrader autograde failed: {tail[-800:]}")
        rec_path.write_text(json.dumps(record, indent=1))
        raise RuntimeError(f"nbgrader autograde {assignment} --student {student} failed:\n{tail}")
    raised = stub_errors(root / AUTOGRADED_DIR / student / assignment / f"{assignment}.ipynb")
    unwritten = unwritten_exercises(assignment, submission)
    # a stub names its function: any function of an exercise raising means it is unwritten
    raised_ids = {label.split(" ", 1)[0] for label in raised}
    M = course_manifest()
    report["not_implemented"] = raised
    if assignment in [n["id"] for n in M.NOTEBOOKS]:
        report["not_implemented"] = [
            label for label, ex in ((M.label(ex), ex) for _, ex in M.exercises(assignment))
            if ex["id"] in raised_ids or label in unwritten]
    write_grade_report(root, student, assignment, report)
    rec_path.write_text(json.dumps(record, indent=1))
    return {"build_ok": build_ok, "overlaid": overlaid, "seconds": time.time() - t0,
            "record": record, "report": report, "output": res.stdout if quiet else None}


_SERVERS = threading.local()
_ALL_SERVERS: list = []


def run_nbgrader(args, root: Path, env: dict, capture: bool = True):
    """``nbgrader ARGS`` for the course at ``root`` (as graders.course.nbgrader), through this
    thread's preloaded server (graders/nbgrader_runner.py: nbgrader is imported once, each
    command runs in a fresh forked process). Returns a CompletedProcess with ``cpu_s``, the
    command's CPU seconds."""
    root = Path(root).resolve()
    argv = [*args, f"--JupyterApp.config_file={CONFIG}", f"--CourseDirectory.root={root}",
            f"--CourseDirectory.db_url=sqlite:///{root / GRADEBOOK}"]
    full_env = dict(os.environ)
    full_env["PATH"] = tool_path()
    full_env.update(env or {})
    server = getattr(_SERVERS, "server", None)
    if server is None:
        server = _SERVERS.server = NbgraderServer()
    if server not in _ALL_SERVERS:
        _ALL_SERVERS.append(server)
    log = root / "build" / "grading" / "nbgrader.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    code, cpu = server.run(argv, root, full_env, log)
    out = log.read_text(errors="replace")
    if not capture:
        sys.stdout.write(out)
    res = subprocess.CompletedProcess(["nbgrader", *argv], code, out if capture else None)
    res.cpu_s = cpu
    return res


def close_nbgrader_servers() -> None:
    """End every preloaded nbgrader server (their CPU time then counts as our children's)."""
    while _ALL_SERVERS:
        _ALL_SERVERS.pop().close()


atexit.register(close_nbgrader_servers)


def isolation_summary(record: dict) -> str:
    """One short phrase for grades.csv: which isolation a grading got."""
    iso = record.get("isolation") or {}
    if iso.get("method") == "unshare":
        return f"namespaces {'+'.join(iso.get('namespaces', []))}, uid {iso.get('uid')}"
    if iso.get("method") == "refused":
        return "refused: no isolation"
    return "NOT ISOLATED" if iso else "unknown"


#: what an unwritten exercise raises (course/manifest.py stub_message)
STUB_MESSAGE = re.compile(r"(?P<name>[\w.]+): exercise (?P<id>\d+\.\d+) of notebook "
                          r"(?P<notebook>\w+)")


def library_tests_hit_stubs(ename: str, evalue: str) -> bool:
    """Whether a ``test_library`` cell's failure comes from unwritten exercises only: its
    AssertionError carries {test: message}, and every failing test met a stub."""
    if ename != "AssertionError":
        return False
    try:
        failed = ast.literal_eval(evalue.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return False
    return bool(failed) and isinstance(failed, dict) and all(
        isinstance(v, str) and STUB_MESSAGE.search(v) is not None for v in failed.values())


def stub_errors(nb_path: Path) -> list:
    """'<id> <name>' of the exercises whose stub raised in a graded notebook, in cell order."""
    import nbformat
    if not nb_path.is_file():
        return []
    found = []
    for cell in nbformat.read(str(nb_path), as_version=4).cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                for m in STUB_MESSAGE.finditer(str(out.get("evalue", ""))):
                    label = f"{m.group('id')} {m.group('name')}"
                    if label not in found:
                        found.append(label)
    return found


def write_grade_report(root: Path, student: str, assignment: str, report: dict) -> Path:
    """grade_report.json beside the autograded notebook: which files were the student's,
    which were missing, which exercises still raised their stub."""
    path = root / AUTOGRADED_DIR / student / assignment / "grade_report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def describe_report(report: dict) -> str:
    """One line for the console and grades.csv, e.g. 'missing needle/quant/reference.py
    (3.1 choose_qparams, ...); not implemented: 3.2 quantize'."""
    parts = []
    if report.get("missing"):
        parts.append(f"missing {', '.join(report['missing'])} "
                     f"({', '.join(report['missing_exercises'])}: graded as not written)")
    if report.get("not_implemented"):
        parts.append("not implemented: " + ", ".join(report["not_implemented"]))
    parts += report.get("notes", [])
    return "; ".join(parts)


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


def _read_record(root: Path, student: str, assignment: str) -> dict:
    p = record_path(root, student, assignment)
    return json.loads(p.read_text()) if p.exists() else {}


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
                     "needs_manual_grade", "isolation", "notes"])
        w2.writerow(["student", "assignment", "notebook", "cell", "score", "max_score"])
        graded = set()
        for a in gb.assignments:
            for sub in a.submissions:
                auto = sum(g.auto_score or 0 for nb in sub.notebooks for g in nb.grades)
                rec = _read_record(root, sub.student_id, a.name)
                rep = root / AUTOGRADED_DIR / sub.student_id / a.name / "grade_report.json"
                notes = [describe_report(json.loads(rep.read_text()))] if rep.is_file() else []
                notes = "; ".join(n for n in notes + rec.get("errors", []) + rec.get("repairs", [])
                                  if n)[:2000]
                w1.writerow([sub.student_id, a.name, f"{sub.score:g}", f"{sub.max_score:g}",
                             f"{auto:g}", sub.needs_manual_grade, isolation_summary(rec), notes])
                graded.add((sub.student_id, a.name))
                for nb in sub.notebooks:
                    for g in nb.grades:
                        w2.writerow([sub.student_id, a.name, nb.name, g.name,
                                     "" if g.score is None else f"{g.score:g}", f"{g.max_score:g}"])
        # a submission whose grading failed before nbgrader stored it: 0, with the reason
        for p in sorted((root / RECORDS).glob("*.json")) if (root / RECORDS).is_dir() else []:
            rec = json.loads(p.read_text())
            key = (rec.get("student"), rec.get("assignment"))
            if key[0] and key not in graded and rec.get("errors"):
                w1.writerow([*key, "0", "", "0", False, isolation_summary(rec),
                             "; ".join(rec["errors"])[:2000]])
    return per_sub, per_cell


def unpack_archives(archives: Path, submitted: Path) -> int:
    """Unpack every ``<archives>/<student>/*.zip``; checksum problems are printed and kept in
    ``submitted/<student>/<notebook>/UNPACK_PROBLEMS.txt``. Returns the number unpacked."""
    n = 0
    for zpath in sorted(Path(archives).glob("*/*.zip")):
        student = zpath.parent.name
        try:
            dest, problems = unpack_submission(zpath, submitted, student)
        except Exception as e:  # noqa: BLE001 - a corrupt archive must not stop the others
            print(f"  [{student}] {zpath.name}: not unpacked: {type(e).__name__}: {e}")
            continue
        n += 1
        if problems:
            (dest / "UNPACK_PROBLEMS.txt").write_text("\n".join(problems) + "\n")
            print(f"  [{student}/{dest.name}] " + "; ".join(problems))
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Autograde every submission in submitted/.")
    ap.add_argument("--student", action="append", help="only these students (repeatable)")
    ap.add_argument("--assignment", action="append", help="only these assignments (repeatable)")
    ap.add_argument("--timeout", type=int, help="per-cell timeout in seconds (config: 900)")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("JOBS", "2")))
    ap.add_argument("--no-build", action="store_true", help="skip the native rebuild")
    ap.add_argument("--unpack", type=Path, metavar="DIR",
                    help="first unpack DIR/<student>/<notebook>.zip (`make submit` archives) "
                         "into submitted/<student>/<notebook>/")
    ap.add_argument("--allow-unisolated", action="store_true",
                    help="grade even where no sandbox can be made (student code then runs "
                         "with the grader's view of the machine)")
    args = ap.parse_args(argv)
    manifest = load_manifest(REPO)
    if args.unpack:
        unpack_archives(args.unpack, REPO / SUBMITTED_DIR)
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
                                 jobs=args.jobs, build=not args.no_build,
                                 allow_unisolated=args.allow_unisolated)
        except SandboxUnavailable as e:
            print(e)
            return 2
        except RuntimeError as e:
            failed += 1
            print(e)
            continue
        scores = cell_scores(REPO, student, assignment)
        got = sum(s or 0 for s, _, _ in scores.values())
        total = sum(m for _, m, _ in scores.values())
        print(f"  [{student}/{assignment}] {got:g}/{total:g} points "
              f"(library files: {', '.join(info['overlaid']) or 'none'}; {info['seconds']:.0f}s)")
        if describe_report(info["report"]):
            print(f"  [{student}/{assignment}] {describe_report(info['report'])}")
    per_sub, per_cell = export_csv(REPO)
    print(f"grades: {per_sub.relative_to(REPO)}, {per_cell.relative_to(REPO)} "
          f"(autograded notebooks in {AUTOGRADED_DIR}/)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
