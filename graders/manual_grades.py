"""The instructor's manual grades survive regrading, for the cells whose input did not change.

What the instructor enters in the gradebook (formgrader) for one graded cell of a submission:
a manual score, extra credit, a comment (``grade.manual_score``, ``grade.extra_credit``,
``grade.needs_manual_grade``, ``comment.manual_comment``). A regrade (a changed submission, or
``--force``) replaces the submission's gradebook rows, so graders/batch.py reads these entries
first and puts back the ones whose cell's *input* is unchanged:

* the grade of a manually graded answer cell (nbgrader ``grade`` and ``solution``) and the
  comment on a Markdown answer: that cell's own source in the student's notebook;
* the grade of an autograded test cell (an instructor's override of the test's score) and the
  comment on a code solution cell: all the student's code (the notebook's solution cells and
  the student's library files), since any of it may change what the tests find or what the
  comment is about.

Entries are keyed ``"<notebook>/<cell>/grade"`` and ``"<notebook>/<cell>/comment"`` (nbgrader
keeps grades on grade cells and comments on solution cells, which may share a name).

An entry whose input changed is dropped (the cell needs grading again; the job's ``reason``
in grades.csv names it), and so is every entry of a submission graded before these inputs
were recorded, unless the whole submission is unchanged (``--force``). When a regrade fails,
the entries are kept in the job's state and restored by the next successful grading, judged
against the inputs they were entered on.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()


def cell_inputs(sub_dir: Path, assignment: str, library_files: list[str]) -> dict[str, str]:
    """{"<notebook>/<cell>/grade|comment": SHA-256 of that entry's input} (module doc).

    library_files: the student's library files the grader takes (repository paths); missing
    ones count as absent. An unreadable notebook gives {}: every entry counts as changed."""
    sub_dir = Path(sub_dir)
    try:
        nb = json.loads((sub_dir / f"{assignment}.ipynb").read_text(errors="replace"))
        cells = [c for c in nb.get("cells", []) if isinstance(c, dict)]
    except (OSError, ValueError, AttributeError):
        return {}

    def meta(c):
        m = c.get("metadata", {}).get("nbgrader", {}) if isinstance(c.get("metadata"), dict) else {}
        return m if isinstance(m, dict) else {}

    def source(c):
        s = c.get("source", "")
        return ("".join(s) if isinstance(s, list) else str(s)).encode()

    code = [source(c) for c in cells if c.get("cell_type") == "code" and meta(c).get("solution")]
    for rel in library_files:
        f = sub_dir / rel
        code += [rel.encode(), f.read_bytes() if f.is_file() and not f.is_symlink() else b"absent"]
    code_hash = _sha(*code)
    out = {}
    for c in cells:
        m = meta(c)
        if not m.get("grade_id"):
            continue
        own = _sha(b"answer", source(c))
        key = f"{assignment}/{m['grade_id']}"
        if m.get("grade"):
            out[f"{key}/grade"] = own if m.get("solution") else code_hash
        if m.get("solution") or m.get("task"):
            out[f"{key}/comment"] = own if c.get("cell_type") == "markdown" else code_hash
    return out


def read_entries(con: sqlite3.Connection, db: str, assignment: str, student: str) -> dict:
    """{"<notebook>/<cell>/grade|comment": {field: value}}: what a person entered for the
    submission (grades with a manual score or extra credit, non-empty comments)."""
    base = (f"FROM {db}.{{t}} x JOIN {db}.submitted_notebook sn ON x.notebook_id = sn.id "
            f"JOIN {db}.notebook n ON sn.notebook_id = n.id "
            f"JOIN {db}.submitted_assignment sa ON sn.assignment_id = sa.id "
            f"JOIN {db}.assignment a ON sa.assignment_id = a.id "
            f"JOIN {db}.base_cell b ON x.cell_id = b.id WHERE a.name = ? AND sa.student_id = ?")
    out: dict[str, dict] = {}
    for nb, cell, ms, ec, need in con.execute(
            "SELECT n.name, b.name, x.manual_score, x.extra_credit, x.needs_manual_grade "
            + base.format(t="grade") + " AND (x.manual_score IS NOT NULL OR x.extra_credit "
            "IS NOT NULL)", (assignment, student)):
        out[f"{nb}/{cell}/grade"] = {"manual_score": ms, "extra_credit": ec,
                                     "needs_manual_grade": need}
    for nb, cell, text in con.execute(
            "SELECT n.name, b.name, x.manual_comment " + base.format(t="comment")
            + " AND x.manual_comment IS NOT NULL AND x.manual_comment != ''",
            (assignment, student)):
        out[f"{nb}/{cell}/comment"] = {"manual_comment": text}
    return out


def write_entries(con: sqlite3.Connection, db: str, assignment: str, student: str,
                  entries: dict) -> None:
    """Put ``entries`` (as read_entries returns them) on the submission's current rows."""
    where = (f"notebook_id = (SELECT sn.id FROM {db}.submitted_notebook sn "
             f"JOIN {db}.notebook n ON sn.notebook_id = n.id "
             f"JOIN {db}.submitted_assignment sa ON sn.assignment_id = sa.id "
             f"JOIN {db}.assignment a ON sa.assignment_id = a.id "
             f"WHERE a.name = ? AND sa.student_id = ? AND n.name = ?) "
             f"AND cell_id = (SELECT b.id FROM {db}.base_cell b JOIN {db}.notebook n "
             f"ON b.notebook_id = n.id JOIN {db}.assignment a ON n.assignment_id = a.id "
             f"WHERE a.name = ? AND n.name = ? AND b.name = ? AND "
             f"(b.type = 'GradeCell') = ?)")
    for key, e in entries.items():
        nb, cell, kind = key.rsplit("/", 2)
        args = (assignment, student, nb, assignment, nb, cell, kind == "grade")
        if kind == "grade":
            con.execute(f"UPDATE {db}.grade SET manual_score = ?, extra_credit = ?, "
                        f"needs_manual_grade = ? WHERE {where}",
                        (e.get("manual_score"), e.get("extra_credit"),
                         e.get("needs_manual_grade", 0), *args))
        else:
            con.execute(f"UPDATE {db}.comment SET manual_comment = ? WHERE {where}",
                        (e.get("manual_comment"), *args))


def split_unchanged(entries: dict, old_inputs: dict, new_inputs: dict,
                    same_submission: bool) -> tuple[dict, dict]:
    """(entries to keep, entries to drop) under the policy of the module doc."""
    keep, drop = {}, {}
    for key, e in entries.items():
        same = same_submission or (key in old_inputs and old_inputs[key] == new_inputs.get(key))
        (keep if same else drop)[key] = e
    return keep, drop
