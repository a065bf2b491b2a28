"""What a grading workspace holds for one (student, notebook): the grading policy.

For notebook k, each library file that holds exercises (course/manifest.py) is taken from:

* the student's submission, for a file holding exercises of k, where every function holding
  an exercise of an *earlier* notebook is replaced by the course's reference version;
* the course's reference, for a file holding only exercises of earlier notebooks;
* the release (stubs), for a file holding only exercises of later notebooks.

So the student's own code is graded for exactly the exercises of notebook k, and a mistake
(or a gap) in an earlier notebook costs points only in that notebook: it does not cascade.
A file of k's own exercises missing from the submission is graded as the release's stubs and
reported by name; a submitted file that does not parse is graded as it is and reported.
Every other file comes from the release; other files of a submission are ignored.
"""
from __future__ import annotations

import ast
from pathlib import Path

from .course import course_manifest


def _function_spans(text: str) -> dict:
    """{qualified name: (first line, last line)} (1-based, decorators included) of every def."""
    spans = {}

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    first = min([child.lineno] + [d.lineno for d in child.decorator_list])
                    spans[name] = (first, child.end_lineno)
                visit(child, name + ".")

    visit(ast.parse(text), "")
    return spans


def splice_functions(student: str, reference: str, names, filename: str = "<file>"):
    """``student`` with each function of ``names`` replaced by its ``reference`` version.

    Returns (text, notes): notes name the functions that could not be replaced (missing from
    the student's file) or say the student's file does not parse (then it is kept as it is)."""
    try:
        s_spans = _function_spans(student)
    except SyntaxError as e:
        return student, [f"{filename} does not parse (line {e.lineno}: {e.msg}); graded as "
                         f"submitted"]
    r_spans = _function_spans(reference)
    r_lines = reference.splitlines(keepends=True)
    lines = student.splitlines(keepends=True)
    notes = []
    todo = []
    for name in names:
        if name not in s_spans:
            notes.append(f"{filename}: {name} is missing from your file; the course's version "
                         f"of it could not be put in")
        elif name in r_spans:
            todo.append((s_spans[name], r_spans[name]))
    for (s0, s1), (r0, r1) in sorted(todo, reverse=True):   # bottom up: spans stay valid
        body = r_lines[r0 - 1:r1]
        if body and not body[-1].endswith("\n"):
            body[-1] += "\n"
        lines[s0 - 1:s1] = body
    return "".join(lines), notes


def plain_file(root: Path, rel: str) -> bool:
    """True when ``root/rel`` is a regular file reached through no symbolic link: a
    submission's ``needle/`` folder linked to the instructor's copy must not pass as the
    student's files (only the last component was checked once)."""
    p = Path(root)
    for part in Path(rel).parts:
        p = p / part
        if p.is_symlink():
            return False
    return p.is_file()


def grading_files(nb_id: str, release_dir: Path, reference_dir: Path, submission: Path):
    """The library files of the grading workspace of notebook ``nb_id``.

    Returns (files, report): files maps repository path -> bytes for every file holding
    exercises (the workspace takes every other file from the release); report is
    {"from_student": [...], "missing": [...], "missing_exercises": [...], "notes": [...]}."""
    M = course_manifest()
    k = M.notebook_index(nb_id)
    by_file = {}
    for n_id, ex in M.exercises():
        f = M.library_file(ex)
        if f:
            by_file.setdefault(f, []).append((M.notebook_index(n_id), ex))
    files = {}
    report = {"from_student": [], "missing": [], "missing_exercises": [], "notes": []}
    for rel, owned in sorted(by_file.items()):
        mine = [ex for i, ex in owned if i == k]
        earlier = [ex for i, ex in owned if i < k]
        ref_path, rel_path, sub_path = reference_dir / rel, release_dir / rel, submission / rel
        if not mine:
            src = ref_path if earlier and not any(i > k for i, _ in owned) else None
            if src is None and earlier:   # earlier and later exercises share a Python file
                text, notes = splice_functions(rel_path.read_text(encoding="utf-8"),
                                               ref_path.read_text(encoding="utf-8"),
                                               [f for ex in earlier for f in M.functions(ex)], rel)
                files[rel] = text.encode()
                report["notes"] += notes
            else:
                files[rel] = (src or rel_path).read_bytes()
            continue
        if not plain_file(submission, rel):
            report["missing"].append(rel)
            report["missing_exercises"] += [M.label(ex) for ex in mine]
            base = rel_path.read_text(encoding="utf-8")
        else:
            report["from_student"].append(rel)
            base = sub_path.read_text(encoding="utf-8", errors="replace")
        if earlier:
            base, notes = splice_functions(base, ref_path.read_text(encoding="utf-8"),
                                           [f for ex in earlier for f in M.functions(ex)], rel)
            report["notes"] += notes
        files[rel] = base.encode()
    return files, report


def unwritten_exercises(nb_id: str, submission: Path) -> list[str]:
    """'<id> <name>' of the exercises of ``nb_id`` whose stub message is still in the submitted
    file (or notebook), or whose file is missing: the student has not written them."""
    M = course_manifest()
    out, texts = [], {}
    for _, ex in M.exercises(nb_id):
        rel = M.library_file(ex) or f"{nb_id}.ipynb"
        if rel not in texts:
            p = submission / rel
            texts[rel] = p.read_text(encoding="utf-8", errors="replace") \
                if plain_file(submission, rel) else None
        text = texts[rel]
        # in a notebook (JSON) the message sits in a string with its quotes escaped or not;
        # an exercise of several functions is unwritten while any of its stubs is left
        if text is None or any(msg in text for msg in M.stub_messages(nb_id, ex)):
            out.append(M.label(ex))
    return out
