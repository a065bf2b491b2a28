"""Grade a whole class: ``python -m graders.batch`` (``make autograde JOBS=N``).

Every (student, assignment) of ``submitted/`` is one job, graded by ``autograde_one`` (the
same code path as a single grading and as the Gradescope autograder) in a private course
root, a *slot* ``build/grading/slots/<k>/``: its own workspace, its own copy of the gradebook
(the assignments, no submissions) and its own ``submitted/``/``autograded/``. N slots run
concurrently; a slot is reset before each job, and its workspace keeps its native build tree,
so a cache miss compiles incrementally.

* Native modules come from a content-addressed cache (graders/build_cache.py): a submission
  that did not touch native code reuses the release's build; a C++/CUDA file is compiled once.
* Resuming: a job is skipped when the SHA-256 over the files that matter (the notebook, the
  student's library files the grader lays over the release, the release itself, the grading
  options) equals the one recorded in ``build/grading/state/<student>/<assignment>.json``.
  ``--force`` regrades everything, ``--retry-failed`` the jobs that failed.
* Isolation of failures: any failure of a job (nbgrader abort, broken notebook, unknown
  assignment) is recorded as that job's status and reason; the other jobs go on.
* One writer: a finished job's gradebook rows, autograded notebook and state are merged into
  the course root under a lock, so the main gradebook serves ``make feedback`` as before.

At the end graders/reports.py writes ``graders/output/grades.csv`` (one row per student,
assignment and graded cell, with status and reason), the per-notebook summary and the plot.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import fcntl
import hashlib
import json
import os
import queue
import re
import shutil
import sqlite3
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from .autograde import (OUTPUT, autograde_one, cell_scores, close_nbgrader_servers,
                        describe_report, find_submissions, gpu_present, isolation_summary)
from . import manual_grades
from .workspace import plain_file
from .build_cache import BuildCache
from .course import (AUTOGRADED_DIR, GRADEBOOK, NB_RELEASE_DIR, REPO, SOURCE_DIR,
                     SUBMITTED_DIR, load_manifest, walk_repo)

GRADING = Path("build") / "grading"
STATE_DIR = GRADING / "state"
SLOTS_DIR = GRADING / "slots"
LOG_DIR = GRADING / "logs"
TEMPLATE_DB = GRADING / "gradebook-template.db"
NATIVE_CACHE = Path("build") / "native_cache"
#: student ids and assignment names become paths: keep them plain
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: gradebook tables holding submissions (everything else defines the assignments)
SUBMISSION_TABLES = ("comment", "grade", "submitted_notebook", "submitted_assignment", "student")


# ------------------------------------------------------------------------------ fingerprints

def _hash_files(h, base: Path, rels) -> None:
    for rel in rels:
        h.update(f"\0{rel}\0".encode())
        p = base / rel
        if not p.is_file():    # a folder, a FIFO or a device in a submission: its name only
            h.update(b"\0not a regular file")
            continue
        with open(p, "rb") as f:    # in chunks: a submitted file may be huge
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)


def release_fingerprint(root: Path, manifest: dict, assignment: str) -> str:
    """SHA-256 of what grading an assignment depends on besides the submission: the release
    files and the instructor notebook of the assignment (its tests, hidden ones included)."""
    release_dir = Path(manifest["release_dir"])
    h = hashlib.sha256()
    _hash_files(h, release_dir, walk_repo(release_dir))
    src = Path(root) / SOURCE_DIR / assignment / f"{assignment}.ipynb"
    h.update(src.read_bytes() if src.exists() else b"no source notebook")
    # the grading policy takes earlier notebooks' exercises from the course's reference
    reference = Path(manifest.get("reference_dir") or REPO)
    _hash_files(h, reference, [r for r in manifest["student_files"] if (reference / r).is_file()])
    return h.hexdigest()


def submission_files(sub_dir: Path, assignment: str, manifest: dict) -> list[str]:
    """The files of a submission the grader uses: the notebook and the student's library files
    (regular files at the manifest's paths); anything else in the upload is ignored."""
    wanted = [f"{assignment}.ipynb"] + list(manifest["student_files"])
    return [rel for rel in wanted
            if plain_file(sub_dir, rel)]


def submission_hash(sub_dir: Path, assignment: str, manifest: dict, release_fp: str,
                    options: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"release": release_fp, "options": options}, sort_keys=True).encode())
    _hash_files(h, Path(sub_dir), submission_files(Path(sub_dir), assignment, manifest))
    return h.hexdigest()


# ------------------------------------------------------------------------------ gradebooks

def make_template(main_db: Path, template: Path) -> Path:
    """A copy of the gradebook with the assignments and no submissions (what a job starts from)."""
    if not main_db.exists():
        raise SystemExit(f"{main_db} not found: run `make release` first")
    template.parent.mkdir(parents=True, exist_ok=True)
    tmp = template.with_name(template.name + ".tmp")
    src = sqlite3.connect(main_db, timeout=60)
    dst = sqlite3.connect(tmp)
    with dst:
        src.backup(dst)
    src.close()
    with dst:
        for t in SUBMISSION_TABLES:
            dst.execute(f"DELETE FROM {t}")
    dst.execute("VACUUM")
    dst.close()
    os.replace(tmp, template)
    return template


def _delete_submission(con: sqlite3.Connection, db: str, assignment: str, student: str) -> None:
    sa = (f"SELECT sa.id FROM {db}.submitted_assignment sa JOIN {db}.assignment a "
          f"ON sa.assignment_id = a.id WHERE a.name = ? AND sa.student_id = ?")
    sn = f"SELECT id FROM {db}.submitted_notebook WHERE assignment_id IN ({sa})"
    for t in ("grade", "comment"):
        con.execute(f"DELETE FROM {db}.{t} WHERE notebook_id IN ({sn})", (assignment, student))
    con.execute(f"DELETE FROM {db}.submitted_notebook WHERE assignment_id IN ({sa})",
                (assignment, student))
    con.execute(f"DELETE FROM {db}.submitted_assignment WHERE id IN ({sa})", (assignment, student))


def merge_gradebook(main_db: Path, job_db: Path | None, assignment: str, student: str,
                    decide=None) -> tuple[dict, dict]:
    """Replace (assignment, student)'s submission in ``main_db`` by the one of ``job_db``
    (None: just remove it). Both gradebooks hold the same assignment rows (the job's is a copy
    of the main one), so the job's rows are copied as they are, in one transaction.

    decide(entries) -> (keep, drop): of the instructor's entries on the old rows (manual
    scores, comments: graders/manual_grades.py), those put back on the new ones. Returns
    (kept, dropped); without a decide, or with job_db None, everything is dropped."""
    con = sqlite3.connect(main_db, timeout=120)
    try:
        if job_db is not None:
            con.execute("ATTACH DATABASE ? AS job", (str(job_db),))
        with con:
            entries = manual_grades.read_entries(con, "main", assignment, student)
            keep, drop = decide(entries) if decide else ({}, entries)
            if job_db is None:
                keep, drop = {}, {**drop, **keep}
            _delete_submission(con, "main", assignment, student)
            if job_db is not None:
                sa = ("SELECT sa.id FROM job.submitted_assignment sa JOIN job.assignment a "
                      "ON sa.assignment_id = a.id WHERE a.name = ? AND sa.student_id = ?")
                sn = f"SELECT id FROM job.submitted_notebook WHERE assignment_id IN ({sa})"
                args = (assignment, student)
                con.execute("INSERT OR IGNORE INTO main.student SELECT * FROM job.student "
                            "WHERE id = ?", (student,))
                con.execute("INSERT INTO main.submitted_assignment SELECT * FROM "
                            f"job.submitted_assignment WHERE id IN ({sa})", args)
                con.execute("INSERT INTO main.submitted_notebook SELECT * FROM "
                            f"job.submitted_notebook WHERE assignment_id IN ({sa})", args)
                for t in ("grade", "comment"):
                    con.execute(f"INSERT INTO main.{t} SELECT * FROM job.{t} "
                                f"WHERE notebook_id IN ({sn})", args)
                manual_grades.write_entries(con, "main", assignment, student, keep)
    finally:
        con.close()
    return keep, drop


def grade_cells(template: Path, assignment: str) -> list[tuple]:
    """[(notebook, cell, max_score, autograded)] of an assignment, in notebook order."""
    con = sqlite3.connect(template)
    try:
        rows = con.execute(
            "SELECT n.name, b.name, g.max_score, g.cell_type FROM grade_cells g "
            "JOIN base_cell b ON g.id = b.id JOIN notebook n ON b.notebook_id = n.id "
            "JOIN assignment a ON n.assignment_id = a.id WHERE a.name = ? "
            "ORDER BY n.name, b.name", (assignment,)).fetchall()
    finally:
        con.close()
    return [(nb, cell, float(m), ctype == "code") for nb, cell, m, ctype in rows]


# ------------------------------------------------------------------------------ jobs

_EXC_LINE = re.compile(r"^\s*(?:\w+\.)*(\w*(?:Error|Exception|Exit|Interrupt))\b:?\s*(.*)$")


def failure_reason(exc: BaseException) -> str:
    """One line for grades.csv: the innermost exception named in the error's text (an
    nbgrader abort carries the traceback of what went wrong: DeadKernelError, NotJSONError,
    ...), else the error itself."""
    lines = str(exc).strip().splitlines()
    for line in reversed(lines[1:]):
        m = _EXC_LINE.match(line)
        if m:
            return f"nbgrader aborted: {m.group(1)}: {m.group(2)}"[:300]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


@dataclass
class Job:
    student: str
    assignment: str
    key: str = ""
    status: str = "pending"        # ok | error | skipped
    reason: str = ""
    cells: list = field(default_factory=list)   # [(notebook, cell, score, max, autograded)]
    seconds: float = 0.0
    log: str = ""
    isolation: str = ""            # which isolation the grading got (graders/sandbox.py)
    profile: dict = field(default_factory=dict)  # where the CPU seconds went (autograde_one)
    resumed_status: str = ""       # for a skipped job: the status recorded when it was graded
    inputs: dict = field(default_factory=dict)  # what each cell's manual grade depends on

    @property
    def name(self) -> str:
        return f"{self.student}/{self.assignment}"

    @property
    def score(self) -> float:
        return sum(c[2] or 0 for c in self.cells if c[4])

    @property
    def max_score(self) -> float:
        return sum(c[3] for c in self.cells if c[4])


def state_path(root: Path, student: str, assignment: str) -> Path:
    return Path(root) / STATE_DIR / student / f"{assignment}.json"


def load_state(root: Path, student: str, assignment: str) -> dict | None:
    try:
        return json.loads(state_path(root, student, assignment).read_text())
    except (OSError, ValueError):
        return None


def recorded_job(root: Path, student: str, assignment: str) -> Job | None:
    """The job as its state file recorded it (status "skipped"), or None if never graded."""
    st = load_state(root, student, assignment)
    if st is None:
        return None
    return Job(student, assignment, key=st.get("key", ""), status="skipped",
               reason=st.get("reason", ""), cells=[tuple(c) for c in st.get("cells", [])],
               seconds=st.get("seconds", 0.0), log=st.get("log", ""),
               isolation=st.get("isolation", ""), resumed_status=st.get("status", ""))


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def _copy_submission(src: Path, dest: Path) -> None:
    """Copy an upload without following links (a link could point at instructor files)."""
    def ignore(d, names):
        return [n for n in names if os.path.islink(os.path.join(d, n))]
    shutil.copytree(src, dest, symlinks=False, ignore=ignore)


def _reset_slot(slot: Path, template: Path, root: Path, assignment: str) -> None:
    for d in (SUBMITTED_DIR, AUTOGRADED_DIR, "feedback", str(LOG_DIR), NB_RELEASE_DIR):
        shutil.rmtree(slot / d, ignore_errors=True)
    db = slot / GRADEBOOK
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(template, db)
    # the student notebook of the release: the skeleton the grader rebuilds cells on
    src = root / NB_RELEASE_DIR / assignment
    if src.is_dir():
        shutil.copytree(src, slot / NB_RELEASE_DIR / assignment)


class Batch:
    """Grades jobs concurrently in ``jobs`` slots of ``root`` and merges the results."""

    def __init__(self, root: Path, manifest: dict, *, jobs: int = 2, timeout: int | None = None,
                 cuda: bool | None = None, build: bool = True, cache_dir: Path | None = None,
                 progress: bool = True, allow_unisolated: bool = False):
        self.root = Path(root).resolve()
        self.manifest = manifest
        self.jobs = max(1, int(jobs))
        self.timeout = timeout
        self.cuda = gpu_present() if cuda is None else cuda
        self.build = build
        self.cache = BuildCache(cache_dir or self.root / NATIVE_CACHE)
        self.progress = progress
        self.allow_unisolated = allow_unisolated
        self.template = self.root / TEMPLATE_DB
        self._merge_lock = threading.Lock()
        self._release_fp: dict[str, str] = {}
        self._cells: dict[str, list] = {}

    # -- bookkeeping ---------------------------------------------------------------------
    def options(self) -> dict:
        return {"timeout": self.timeout, "cuda": self.cuda, "build": self.build}

    def release_fp(self, assignment: str) -> str:
        if assignment not in self._release_fp:
            self._release_fp[assignment] = release_fingerprint(self.root, self.manifest,
                                                               assignment)
        return self._release_fp[assignment]

    def cells_of(self, assignment: str) -> list:
        if assignment not in self._cells:
            self._cells[assignment] = grade_cells(self.template, assignment)
        return self._cells[assignment]

    def plan(self, pairs, force=False, retry_failed=False) -> tuple[list[Job], list[Job]]:
        """(jobs to grade, jobs resumed from their recorded state)."""
        todo, done = [], []
        for student, assignment in pairs:
            job = Job(student, assignment)
            sub = self.root / SUBMITTED_DIR / student / assignment
            if not (SAFE_NAME.match(student) and SAFE_NAME.match(assignment)):
                job.key = "unsafe-name"
            elif assignment in self.manifest["assignments"]:
                job.key = submission_hash(sub, assignment, self.manifest,
                                          self.release_fp(assignment), self.options())
            else:
                job.key = "unknown-assignment"
            old = recorded_job(self.root, student, assignment)
            if (not force and old is not None and old.key == job.key
                    and (old.resumed_status == "ok" or not retry_failed)):
                done.append(old)
            else:
                todo.append(job)
        return todo, done

    # -- one job -------------------------------------------------------------------------
    def grade(self, job: Job, slot: Path) -> Job:
        t0 = time.time()
        log_path = self.root / LOG_DIR / job.student / f"{job.assignment}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        job.log = str(log_path.relative_to(self.root))
        lines = [f"grading {job.name} in {slot} (key {job.key[:16]})"]
        job_db = None
        try:
            if job.key == "unsafe-name":
                raise ValueError(f"student or assignment name {job.name!r} is not a plain "
                                 "name (letters, digits, '_', '.', '-'): rename the folder")
            if job.key == "unknown-assignment":
                raise ValueError(f"unknown assignment {job.assignment!r}: not in the release "
                                 f"({', '.join(self.manifest['assignments'])})")
            sub = self.root / SUBMITTED_DIR / job.student / job.assignment
            if not (sub / f"{job.assignment}.ipynb").is_file():
                raise ValueError(f"the submission has no {job.assignment}.ipynb")
            info = self.manifest["assignments"][job.assignment]
            own = set(info.get("own_files", info.get("library_files", [])))
            job.inputs = manual_grades.cell_inputs(
                sub, job.assignment, [f for f in self.manifest["student_files"] if f in own])
            _reset_slot(slot, self.template, self.root, job.assignment)
            _copy_submission(sub, slot / SUBMITTED_DIR / job.student / job.assignment)
            info = autograde_one(slot, job.student, job.assignment, self.manifest,
                                 timeout=self.timeout, jobs=max(1, (os.cpu_count() or 2)
                                                                // self.jobs),
                                 cuda=self.cuda, build=self.build, native_cache=self.cache,
                                 allow_unisolated=self.allow_unisolated)
            job.isolation = isolation_summary(info.get("record") or {})
            job.profile = (info.get("record") or {}).get("profile", {})
            build_log = slot / GRADING / "logs" / f"{job.student}-{job.assignment}-build.log"
            if build_log.exists():
                lines += ["-- native build", build_log.read_text(errors="replace")[-20000:]]
            lines += ["-- nbgrader", (info.get("output") or "")[-20000:]]
            scores = cell_scores(slot, job.student, job.assignment)
            job.cells = [(nb, cell, s, m, auto) for (nb, cell), (s, m, auto) in
                         sorted(scores.items())]
            job.status = "ok"
            notes = [describe_report(info["report"])] if info.get("report") else []
            notes = [n for n in notes if n]
            if not info["build_ok"]:
                notes.append("native build failed (its tests score 0; see the log)")
            job.reason = "; ".join(notes)
            job_db = slot / GRADEBOOK
        except Exception as e:  # noqa: BLE001 - one submission's failure never stops the others
            job.status = "error"
            job.reason = failure_reason(e)
            job.cells = [(nb, cell, 0.0, m, auto) for nb, cell, m, auto in
                         self.cells_of(job.assignment)] if job.key not in (
                             "unsafe-name", "unknown-assignment") else []
            lines += ["-- FAILED", traceback.format_exc()]
        job.seconds = time.time() - t0
        lines.append(f"-- {job.status} in {job.seconds:.1f}s {job.reason}")
        log_path.write_text("\n".join(lines) + "\n")
        self.merge(job, slot if job_db else None)
        return job

    def merge(self, job: Job, slot: Path | None) -> None:
        """The one writer: gradebook rows, the autograded folder and the job's state."""
        with self._merge_lock:
            old = load_state(self.root, job.student, job.assignment) or {}
            pending = {}
            if job.key not in ("unsafe-name", "unknown-assignment"):
                def decide(entries):
                    entries = {**old.get("manual_pending", {}), **entries}
                    return manual_grades.split_unchanged(
                        entries, old.get("inputs", {}), job.inputs, old.get("key") == job.key)
                kept, dropped = merge_gradebook(self.root / GRADEBOOK,
                                                slot / GRADEBOOK if slot else None,
                                                job.assignment, job.student, decide)
                if job.status == "ok":
                    self._note_manual(job, kept, dropped)
                else:
                    pending = dropped      # restored by the next successful grading
                dest = self.root / AUTOGRADED_DIR / job.student / job.assignment
                tmp = dest.with_name(dest.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                src = slot / AUTOGRADED_DIR / job.student / job.assignment if slot else None
                if src is not None and src.is_dir():
                    shutil.copytree(src, tmp)
                shutil.rmtree(dest, ignore_errors=True)
                if tmp.exists():
                    os.replace(tmp, dest)
            _write_json(state_path(self.root, job.student, job.assignment), {
                "key": job.key, "status": job.status, "reason": job.reason,
                "cells": job.cells, "seconds": round(job.seconds, 2), "log": job.log,
                "isolation": job.isolation, "profile": job.profile,
                "inputs": job.inputs if job.status == "ok" else old.get("inputs", {}),
                "manual_pending": pending,
                "graded_at": time.strftime("%Y-%m-%dT%H:%M:%S")})

    @staticmethod
    def _note_manual(job: Job, kept: dict, dropped: dict) -> None:
        """The kept manual scores in the job's cells; the dropped entries in its reason."""
        scores = {k.rsplit("/", 1)[0]: e for k, e in kept.items() if k.endswith("/grade")}
        cells = []
        for nb, cell, score, mx, auto in job.cells:
            e = scores.get(f"{nb}/{cell}")
            if e is not None and e.get("manual_score") is not None:
                score = e["manual_score"] + (e.get("extra_credit") or 0.0)
            cells.append((nb, cell, score, mx, auto))
        job.cells = cells
        if dropped:
            names = ", ".join(sorted(dropped))
            job.reason = "; ".join(r for r in (job.reason, f"manual grades/comments dropped, "
                                                          f"their cells changed: {names}") if r)

    # -- the class -----------------------------------------------------------------------
    def run(self, pairs, force=False, retry_failed=False) -> list[Job]:
        make_template(self.root / GRADEBOOK, self.template)
        todo, done = self.plan(pairs, force, retry_failed)
        slots: queue.Queue = queue.Queue()
        for k in range(self.jobs):
            slots.put(self.root / SLOTS_DIR / str(k))

        def work(job):
            slot = slots.get()
            try:
                return self.grade(job, slot)
            finally:
                slots.put(slot)

        bar = _progress(len(todo), self.progress)
        failures = 0
        with cf.ThreadPoolExecutor(max_workers=self.jobs) as pool:
            futures = [pool.submit(work, j) for j in todo]
            for fut in cf.as_completed(futures):
                job = fut.result()
                failures += job.status == "error"
                bar.update(1)
                bar.set_postfix(failed=failures, last=job.name, refresh=False)
                if job.status == "error":
                    bar.write(f"  FAILED {job.name}: {job.reason} (log: {job.log})")
        bar.close()
        close_nbgrader_servers()
        return todo + done


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc="grading", unit="nb", disable=not enabled or total == 0,
                mininterval=1.0, dynamic_ncols=True)


def run_lock(root: Path):
    """An exclusive lock on the course root's grading state (one batch at a time)."""
    path = Path(root) / GRADING / ".batch.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise SystemExit(f"another grading run holds {path}: wait for it to finish") from None
    return fh


def summary_line(jobs: list[Job], seconds: float, cache: BuildCache) -> str:
    graded = [j for j in jobs if j.status != "skipped"]
    failed = [j for j in jobs if j.status == "error" or j.resumed_status == "error"]
    return (f"{len(graded)} graded, {len(jobs) - len(graded)} unchanged (resumed), "
            f"{len(failed)} failed, in {seconds:.0f}s; native builds: {cache.misses} compiled, "
            f"{cache.hits} from the cache")


def grade_class(root: Path, *, jobs=2, students=None, assignments=None, force=False,
                retry_failed=False, timeout=None, cuda=None, build=True, progress=True,
                out_dir: Path | None = None, cache_dir: Path | None = None,
                quiet=False, allow_unisolated=False) -> list[Job]:
    """Grade every submission of ``root`` (see the module docstring); returns the jobs."""
    from .reports import write_reports
    root = Path(root).resolve()
    t0 = time.time()
    manifest = load_manifest(root)
    pairs = find_submissions(root, students, assignments)
    lock = run_lock(root)
    try:
        batch = Batch(root, manifest, jobs=jobs, timeout=timeout, cuda=cuda, build=build,
                      cache_dir=cache_dir, progress=progress,
                      allow_unisolated=allow_unisolated)
        result = batch.run(pairs, force=force, retry_failed=retry_failed)
        # The reports cover the whole class, also the submissions this run was not asked for.
        ran = {(j.student, j.assignment) for j in result}
        others = [recorded_job(root, s, a) for s, a in find_submissions(root)
                  if (s, a) not in ran]
        paths = write_reports(result + [j for j in others if j is not None], out_dir or OUTPUT)
    finally:
        lock.close()
    if not quiet:
        for job in sorted(result, key=lambda j: (j.student, j.assignment)):
            if job.status == "error" or job.resumed_status == "error":
                print(f"  {job.name}: FAILED ({job.reason}; log {job.log})")
        print(summary_line(result, time.time() - t0, batch.cache))
        print("reports: " + ", ".join(str(p) for p in paths))
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Grade every submission of submitted/, "
                                 "concurrently and resumably.")
    ap.add_argument("--jobs", "-j", type=int, default=int(os.environ.get("JOBS", "2")),
                    help="concurrent gradings (default $JOBS or 2)")
    ap.add_argument("--student", action="append", help="only these students (repeatable)")
    ap.add_argument("--assignment", action="append", help="only these assignments (repeatable)")
    ap.add_argument("--force", action="store_true", help="regrade unchanged submissions too")
    ap.add_argument("--retry-failed", action="store_true",
                    help="regrade unchanged submissions whose grading failed")
    ap.add_argument("--timeout", type=int, help="per-cell timeout in seconds (config: 900)")
    ap.add_argument("--no-build", action="store_true", help="skip the native build")
    ap.add_argument("--allow-unisolated", action="store_true",
                    help="grade even where the sandbox is unavailable (recorded per grading)")
    ap.add_argument("--root", type=Path, default=REPO, help="course root (default: repository)")
    ap.add_argument("--out", type=Path, help="report directory (default graders/output)")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs must be at least 1, got {args.jobs}")
    jobs = grade_class(args.root, jobs=args.jobs, students=args.student,
                       assignments=args.assignment, force=args.force,
                       retry_failed=args.retry_failed, timeout=args.timeout,
                       build=not args.no_build, out_dir=args.out,
                       allow_unisolated=args.allow_unisolated)
    if not jobs:
        print(f"no submissions in {args.root / SUBMITTED_DIR} "
              "(expected submitted/<student>/<assignment>/)")
    return 1 if any(j.status == "error" for j in jobs) else 0


if __name__ == "__main__":
    sys.exit(main())
