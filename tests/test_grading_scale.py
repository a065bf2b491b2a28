"""Fast unit tests of class-scale grading (graders/batch.py, build_cache.py, reports.py,
gradescope.py); the end-to-end check with real gradings is graders/check_scale.py."""
import io
import json
import sqlite3
import tarfile
import zipfile
from pathlib import Path

import pytest

from graders import batch, build_cache, gradescope, reports


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------------- build cache

def _workspace(tmp_path, kernel="int f() { return 1; }\n"):
    ws = tmp_path / "ws"
    _write(ws / "CMakeLists.txt", "project(x)\n")
    _write(ws / "src" / "cpu" / "k.cc", kernel)
    _write(ws / "needle" / "quant" / "reference.py", "x = 1\n")
    return ws


def test_build_key_depends_on_native_sources_and_mode_only(tmp_path):
    ws = _workspace(tmp_path)
    k0 = build_cache.build_key(ws, "cpu")
    assert k0 == build_cache.build_key(ws, "cpu")
    (ws / "needle" / "quant" / "reference.py").write_text("x = 2\n")      # Python: no rebuild
    assert build_cache.build_key(ws, "cpu") == k0
    assert build_cache.build_key(ws, "emulate-host") != k0
    (ws / "src" / "cpu" / "k.cc").write_text("int f() { return 2; }\n")
    k1 = build_cache.build_key(ws, "cpu")
    assert k1 != k0
    _write(ws / "src" / "cpu" / "new.h", "")                               # a new header counts
    assert build_cache.build_key(ws, "cpu") != k1


def test_cache_compiles_each_source_set_once(tmp_path, monkeypatch):
    calls = []

    def fake_build(ws, log, jobs, cuda, emulate=False, allow_unisolated=False):
        calls.append(Path(ws).name)
        mod = Path(ws) / "needle" / "backend_ndarray"
        mod.mkdir(parents=True, exist_ok=True)
        (mod / "ndarray_backend_cpu.so").write_text((Path(ws) / "src/cpu/k.cc").read_text())
        Path(log).write_text("built\n")
        return True

    monkeypatch.setattr("graders.autograde.build_native", fake_build)
    cache = build_cache.BuildCache(tmp_path / "cache")
    ws = _workspace(tmp_path)
    log = tmp_path / "log"
    assert cache.build(ws, log, 1, False) and (cache.misses, cache.hits) == (1, 0)
    so = ws / "needle" / "backend_ndarray" / "ndarray_backend_cpu.so"
    so.write_text("stale module of another student")
    (ws / "needle" / "backend_ndarray" / "ndarray_backend_cuda.so").write_text("stale")
    assert cache.build(ws, log, 1, False) and (cache.misses, cache.hits) == (1, 1)
    assert so.read_text() == "int f() { return 1; }\n"                    # the cached module
    assert not (ws / "needle" / "backend_ndarray" / "ndarray_backend_cuda.so").exists()
    assert "cache hit" in log.read_text()
    (ws / "src" / "cpu" / "k.cc").write_text("int f() { return 3; }\n")
    assert cache.build(ws, log, 1, False) and cache.misses == 2
    assert so.read_text() == "int f() { return 3; }\n"


def test_failed_build_is_not_cached(tmp_path, monkeypatch):
    monkeypatch.setattr("graders.autograde.build_native", lambda *a, **k: False)
    cache = build_cache.BuildCache(tmp_path / "cache")
    ws = _workspace(tmp_path)
    assert not cache.build(ws, tmp_path / "log", 1, False)
    assert not any(p.is_dir() for p in (tmp_path / "cache").iterdir())


# ---------------------------------------------------------------------- resume hashes

def test_submission_hash_covers_the_files_that_matter(tmp_path):
    manifest = {"student_files": ["needle/quant/reference.py", "src/cpu/qgemm.cc"]}
    sub = tmp_path / "sub"
    _write(sub / "03.ipynb", "{}")
    _write(sub / "needle" / "quant" / "reference.py", "a = 1\n")

    def h(release="r", options=None):
        return batch.submission_hash(sub, "03", manifest, release, options or {"t": 1})

    h0 = h()
    _write(sub / "notes.txt", "ignored")
    _write(sub / "tests" / "test_x.py", "ignored")
    assert h() == h0
    assert h(release="other release") != h0 and h(options={"t": 2}) != h0
    _write(sub / "src" / "cpu" / "qgemm.cc", "int g;\n")
    h1 = h()
    assert h1 != h0
    (sub / "src" / "cpu" / "qgemm.cc").write_text("int g2;\n")
    assert h() != h1
    assert batch.submission_files(sub, "03", manifest) == [
        "03.ipynb", "needle/quant/reference.py", "src/cpu/qgemm.cc"]


# ---------------------------------------------------------------------- gradebook merge

_SCHEMA = """
CREATE TABLE assignment (id TEXT PRIMARY KEY, name TEXT UNIQUE);
CREATE TABLE notebook (id TEXT PRIMARY KEY, name TEXT, assignment_id TEXT);
CREATE TABLE base_cell (id TEXT PRIMARY KEY, name TEXT, notebook_id TEXT, type TEXT);
CREATE TABLE student (id TEXT PRIMARY KEY, first_name TEXT);
CREATE TABLE submitted_assignment (id TEXT PRIMARY KEY, assignment_id TEXT, student_id TEXT);
CREATE TABLE submitted_notebook (id TEXT PRIMARY KEY, assignment_id TEXT, notebook_id TEXT);
CREATE TABLE grade (id TEXT PRIMARY KEY, notebook_id TEXT, cell_id TEXT, auto_score REAL,
                    manual_score REAL, extra_credit REAL, needs_manual_grade BOOLEAN);
CREATE TABLE comment (id TEXT PRIMARY KEY, notebook_id TEXT, cell_id TEXT, auto_comment TEXT,
                      manual_comment TEXT);
"""


def _gradebook(path, rows):
    """A gradebook of assignment 03 (one notebook 03: test cell C1, answer cell why with its
    solution cell W2) and one submission per (student, id, C1's score)."""
    con = sqlite3.connect(path)
    con.executescript(_SCHEMA)
    con.execute("INSERT INTO assignment VALUES ('A1', '03')")
    con.execute("INSERT INTO notebook VALUES ('N1', '03', 'A1')")
    con.executemany("INSERT INTO base_cell VALUES (?, ?, 'N1', ?)",
                    [("C1", "C1", "GradeCell"), ("W1", "why", "GradeCell"),
                     ("W2", "why", "SolutionCell")])
    for student, sa, score in rows:
        con.execute("INSERT OR IGNORE INTO student VALUES (?, '')", (student,))
        con.execute("INSERT INTO submitted_assignment VALUES (?, 'A1', ?)", (sa, student))
        con.execute("INSERT INTO submitted_notebook VALUES (?, ?, 'N1')", (sa + "n", sa))
        con.execute("INSERT INTO grade (id, notebook_id, cell_id, auto_score, needs_manual_grade) "
                    "VALUES (?, ?, 'C1', ?, 0)", (sa + "g", sa + "n", score))
        con.execute("INSERT INTO grade (id, notebook_id, cell_id, needs_manual_grade) "
                    "VALUES (?, ?, 'W1', 1)", (sa + "w", sa + "n"))
        con.execute("INSERT INTO comment (id, notebook_id, cell_id, auto_comment) "
                    "VALUES (?, ?, 'W2', '')", (sa + "c", sa + "n"))
    con.commit()
    con.close()


def _scores(path):
    con = sqlite3.connect(path)
    rows = con.execute("SELECT sa.student_id, g.auto_score FROM grade g JOIN submitted_notebook "
                       "n ON g.notebook_id = n.id JOIN submitted_assignment sa "
                       "ON n.assignment_id = sa.id WHERE g.cell_id = 'C1' ORDER BY 1").fetchall()
    n_comments = con.execute("SELECT count(*) FROM comment").fetchone()[0]
    con.close()
    return rows, n_comments


def test_merge_replaces_one_students_submission(tmp_path):
    main, job = tmp_path / "main.db", tmp_path / "job.db"
    _gradebook(main, [("alice", "s1", 1.0), ("bob", "s2", 2.0)])
    _gradebook(job, [("alice", "s9", 5.0)])
    batch.merge_gradebook(main, job, "03", "alice")
    assert _scores(main) == ([("alice", 5.0), ("bob", 2.0)], 2)
    batch.merge_gradebook(main, None, "03", "bob")                   # a failed regrade
    assert _scores(main) == ([("alice", 5.0)], 1)


def _nb(answer, code):
    """A student notebook of assignment 03: solution cell impl, test cell C1, answer why."""
    def cell(kind, src, **nbg):
        return {"cell_type": kind, "source": src, "metadata": {"nbgrader": nbg}}
    return json.dumps({"cells": [cell("code", code, solution=True, grade=False, grade_id="impl"),
                                 cell("code", "assert f()", grade=True, grade_id="C1"),
                                 cell("markdown", answer, solution=True, grade=True,
                                      grade_id="why")],
                       "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


def _instructor_enters(db, override=0.5):
    """What a person types into formgrader for alice: an override of test C1, a score and a
    comment on the answer why."""
    con = sqlite3.connect(db)
    with con:
        con.execute("UPDATE grade SET manual_score = ? WHERE cell_id = 'C1'", (override,))
        con.execute("UPDATE grade SET manual_score = 1.5, extra_credit = 0.25, "
                    "needs_manual_grade = 0 WHERE cell_id = 'W1'")
        con.execute("UPDATE comment SET manual_comment = 'clear' WHERE cell_id = 'W2'")
    con.close()


def _manual(db):
    con = sqlite3.connect(db)
    rows = con.execute("SELECT g.cell_id, g.manual_score, g.extra_credit, g.needs_manual_grade "
                       "FROM grade g ORDER BY 1").fetchall()
    comments = con.execute("SELECT manual_comment FROM comment").fetchall()
    con.close()
    return rows, comments


def test_regrading_keeps_manual_grades_of_unchanged_cells(tmp_path):
    import threading
    from graders import manual_grades
    from graders.course import GRADEBOOK
    root, sub = tmp_path / "course", tmp_path / "sub"
    main = root / GRADEBOOK
    main.parent.mkdir(parents=True)
    _gradebook(main, [("alice", "s1", 1.0)])
    b = batch.Batch.__new__(batch.Batch)
    b.root, b._merge_lock = root, threading.Lock()

    runs = []

    def regrade(answer, code, key, status="ok"):
        runs.append(key)
        _write(sub / "03.ipynb", _nb(answer, code))
        _write(sub / "needle" / "quant" / "reference.py", "x = 1\n")
        slot = tmp_path / f"slot-{len(runs)}"
        (slot / GRADEBOOK).parent.mkdir(parents=True)
        _gradebook(slot / GRADEBOOK, [("alice", f"s-{key}", 1.0)])
        job = batch.Job("alice", "03", key=key, status=status,
                        cells=[("03", "C1", 1.0, 1.0, True), ("03", "why", None, 2.0, False)],
                        inputs=manual_grades.cell_inputs(sub, "03", ["needle/quant/reference.py"]))
        b.merge(job, slot if status == "ok" else None)
        return job

    regrade("because", "def f(): return 1", "k1")       # first grading, then the instructor
    _instructor_enters(main)
    entered = ([("C1", 0.5, None, 0), ("W1", 1.5, 0.25, 0)], [("clear",)])
    job = regrade("because", "def f(): return 1", "k1")  # --force, nothing changed
    assert _manual(main) == entered
    assert job.cells == [("03", "C1", 0.5, 1.0, True), ("03", "why", 1.75, 2.0, False)]
    assert job.reason == ""
    job = regrade("because of int32", "def f(): return 1", "k2")   # the answer changed
    assert _manual(main) == ([("C1", 0.5, None, 0), ("W1", None, None, 1)], [(None,)])
    assert "03/why/grade" in job.reason and "03/why/comment" in job.reason
    assert "C1" not in job.reason
    job = regrade("because of int32", "def f(): return 2", "k3")   # the code changed
    assert _manual(main) == ([("C1", None, None, 0), ("W1", None, None, 1)], [(None,)])
    assert "03/C1/grade" in job.reason
    _instructor_enters(main, override=0.75)
    regrade("because of int32", "def f(): return 2", "k3", status="error")  # a failed regrade
    assert _manual(main) == ([], [])
    job = regrade("because of int32", "def f(): return 2", "k3")   # then it grades again
    assert _manual(main) == ([("C1", 0.75, None, 0), ("W1", 1.5, 0.25, 0)], [("clear",)])
    assert job.reason == ""


def test_cell_inputs_tell_answer_cells_from_test_cells(tmp_path):
    from graders import manual_grades
    _write(tmp_path / "03.ipynb", _nb("because", "def f(): return 1"))
    lib = _write(tmp_path / "needle" / "quant" / "reference.py", "x = 1\n")
    first = manual_grades.cell_inputs(tmp_path, "03", ["needle/quant/reference.py"])
    assert sorted(first) == ["03/C1/grade", "03/impl/comment", "03/why/comment", "03/why/grade"]
    lib.write_text("x = 2\n")                      # a library file counts for the code's cells
    second = manual_grades.cell_inputs(tmp_path, "03", ["needle/quant/reference.py"])
    changed = sorted(k for k in first if first[k] != second[k])
    assert changed == ["03/C1/grade", "03/impl/comment"]
    (tmp_path / "03.ipynb").write_text("{not json")
    assert manual_grades.cell_inputs(tmp_path, "03", []) == {}


# ---------------------------------------------------------------------- reports

def _job(student, cells, status="ok", reason=""):
    return batch.Job(student, "03", status=status, reason=reason,
                     cells=[("03", c, s, m, True) for c, s, m in cells])


def test_reports_summary_values(tmp_path):
    jobs = [_job("a", [("t1", 3, 3), ("t2", 2, 2)]),
            _job("b", [("t1", 0, 3), ("t2", 2, 2)]),
            _job("c", [("t1", 0, 3), ("t2", 0, 2)], status="error", reason="ValueError: bad")]
    paths = reports.write_reports(jobs, tmp_path)
    rows = reports.grade_rows(jobs)
    assert len(rows) == 6 and rows[-1]["reason"] == "ValueError: bad"
    (s,) = reports.notebook_summary(rows)
    assert s["students"] == 3 and s["mean"] == pytest.approx(7 / 3) and s["median"] == 2
    assert s["losing"] == {"t1": pytest.approx(2 / 3), "t2": pytest.approx(1 / 3)}
    assert s["most_failed"] == "t1"
    assert (tmp_path / "scores.png").stat().st_size > 1000 and len(paths) == 4
    assert "t1 (67% lose points)" in (tmp_path / "summary.md").read_text()


# ---------------------------------------------------------------------- gradescope

def test_results_json_schema_and_hidden_tests():
    job = batch.Job("s", "03", status="ok", seconds=3.0, cells=[
        ("03", "test_a", 3.0, 3.0, True), ("03", "test_b", 0.0, 2.0, True),
        ("03", "why", 0.0, 2.0, False)])
    errors = {"test_b": [{"ename": "AssertionError", "evalue": "off by one",
                          "traceback": ["\x1b[31mTraceback\x1b[0m", "assert secret_check()"]}]}
    r = gradescope.results_json(job, {"assignment": "03", "hidden_cells": ["test_b"]}, errors,
                                "native build: cache hit", [])
    json.dumps(r)
    assert r["score"] == 3.0 and [t["max_score"] for t in r["tests"]] == [3.0, 2.0]
    a, b = r["tests"]
    assert a["visibility"] == "visible" and a["output"] == "passed"
    assert b["visibility"] == "after_due_date" and b["status"] == "failed"
    assert b["output"] == "AssertionError: off by one"                # no traceback
    assert "native build" in r["output"] and "2 points of written answers" in r["output"]
    failed = gradescope.results_json(batch.Job("s", "03", status="error", reason="boom",
                                               cells=job.cells), {"assignment": "03"}, {}, "", [])
    assert failed["score"] == 0 and "boom" in failed["tests"][0]["output"]


MANIFEST = {"student_files": ["needle/quant/reference.py", "needle/quant/fuse.py"]}


@pytest.mark.parametrize("layout", ["paths", "flat", "zip", "tar", "repo"])
def test_layout_upload(tmp_path, layout):
    up = tmp_path / "upload"
    files = {"03.ipynb": "{nb}", "needle/quant/reference.py": "ref"}
    if layout == "paths":
        for rel, text in files.items():
            _write(up / rel, text)
    elif layout == "flat":
        _write(up / "03.ipynb", "{nb}")
        _write(up / "reference.py", "ref")
    elif layout == "repo":
        _write(up / "needle-quant" / "notebooks" / "03.ipynb", "{nb}")
        _write(up / "needle-quant" / "needle" / "quant" / "reference.py", "ref")
    else:
        up.mkdir()
        if layout == "zip":
            with zipfile.ZipFile(up / "sub.zip", "w") as zf:
                for rel, text in files.items():
                    zf.writestr(rel, text)
        else:
            with tarfile.open(up / "sub.tar.gz", "w:gz") as tf:
                for rel, text in files.items():
                    info = tarfile.TarInfo(rel)
                    info.size = len(text)
                    tf.addfile(info, io.BytesIO(text.encode()))
    dest = tmp_path / "sub" / "03"
    gradescope.layout_upload(up, dest, "03", MANIFEST)
    assert (dest / "03.ipynb").read_text() == "{nb}"
    assert (dest / "needle/quant/reference.py").read_text() == "ref"
    assert not (dest / "needle/quant/fuse.py").exists()


def test_layout_upload_refuses_escaping_archive(tmp_path):
    up = tmp_path / "upload"
    up.mkdir()
    with zipfile.ZipFile(up / "sub.zip", "w") as zf:
        zf.writestr("../../evil.py", "x")
    with pytest.raises(ValueError, match="outside"):
        gradescope.layout_upload(up, tmp_path / "sub" / "03", "03", MANIFEST)
    assert not (tmp_path / "evil.py").exists()


def test_failure_reason_names_the_inner_error():
    err = RuntimeError("nbgrader autograde 03 --student x failed:\n  File \"a.py\", line 1\n"
                       "    raise DeadKernelError(\"Kernel died\") from None\n"
                       "    nbclient.exceptions.DeadKernelError: Kernel died\n"
                       "[AutogradeApp | ERROR] There was an error processing assignment")
    assert batch.failure_reason(err) == "nbgrader aborted: DeadKernelError: Kernel died"
    assert batch.failure_reason(ValueError("no 03.ipynb")) == "ValueError: no 03.ipynb"
