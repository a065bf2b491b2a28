"""Build the student release: ``python -m graders.release`` (``make release``).

1. Every library, native and test file of the repository is copied to ``release/``, with its
   solution regions replaced by stubs and its hidden tests removed (graders/strip.py). Build
   outputs, the virtual environment, grader tooling and student/grader state are never copied
   (graders/course.py lists them).
2. Every notebook ``notebooks/<name>.ipynb`` becomes nbgrader assignment ``<name>``:
   ``nbgrader generate_assignment`` writes the student version (solutions cleared, hidden tests
   removed, outputs cleared, cells locked and checksummed), which lands in
   ``release/notebooks/<name>.ipynb``.
3. ``build/course/manifest.json`` records the library files that carry solution regions and,
   per notebook, what course/manifest.py derives: its exercises with their stub messages, the
   files its submission carries and those of its own exercises.

Stubs carry the exercise's message (Python, C++, CUDA and notebook solution cells alike), the
release's README is generated from the manifest (graders/student_readme.py) and its Makefile
is the student one (course/Makefile.student). The release refuses to build when the manifest
and the solution regions disagree (graders.course.check_manifest).

The release is written to a temporary directory and moved into place at the end, so a failure
never leaves a half-written release/.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import nbformat

from .course import (MANIFEST, NB_RELEASE_DIR, REPO, SOURCE_DIR, check_manifest,
                     course_manifest, nbgrader, notebook_names, walk_repo)
from .strip import StripError, enclosing_python_function, find_regions, language_of, strip_source
from .student_readme import render_student_readme

#: the line nbgrader's ClearSolutions writes for a solution region (graders/nbgrader_config.py)
NB_STUB_LINE = "raise NotImplementedError()"


def stub_messages():
    """{(notebook id or None, where): stub message} from the course manifest."""
    M = course_manifest()
    out = {}
    for nb_id, ex in M.exercises():
        for where, func in zip(M.wheres(ex), M.functions(ex)):
            key = (nb_id, where) if where.startswith("cell:") else (None, where)
            out[key] = M.stub_message(nb_id, ex, func)
    return out


def scan_library(repo: Path):
    """Validate markers in every handled file; return {relpath: [regions]} of marked files."""
    marked, errors = {}, []
    for rel in walk_repo(repo):
        if rel.startswith("notebooks/"):
            continue
        lang = language_of(rel)
        if lang is None:
            continue
        text = (repo / rel).read_text(encoding="utf-8", errors="replace")
        try:
            regions = find_regions(text, lang, rel)
        except StripError as e:
            errors.append(str(e))
            continue
        if regions:
            marked[rel] = regions
    if errors:
        raise SystemExit("malformed solution markers:\n  " + "\n  ".join(errors))
    return marked


def copy_library(repo: Path, out: Path, marked: dict) -> None:
    for rel in walk_repo(repo):
        if rel.startswith("notebooks/") and rel.endswith(".ipynb"):
            continue
        src, dest = repo / rel, out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if rel in marked:
            text = src.read_text(encoding="utf-8")
            messages = stub_messages()
            dest.write_text(strip_source(text, language_of(rel), rel,
                                         message_for=lambda f, r=rel: messages.get((None, f"{r}:{f}"))),
                            encoding="utf-8")
            shutil.copymode(src, dest)
        else:
            shutil.copy2(src, dest)
    # Students get their own README (generated from the course manifest) and Makefile (only
    # the student tools), not the instructor's.
    (out / "README.md").write_text(render_student_readme(), encoding="utf-8")
    shutil.copy2(repo / "course" / "Makefile.student", out / "Makefile")


def name_notebook_stubs(inst_nb, released_nb, nb_id: str) -> int:
    """Give the stubs nbgrader wrote into solution cells the exercise's message: the i-th
    ``raise NotImplementedError()`` of a cell replaces its i-th solution region. Returns the
    number of stubs named."""
    messages = stub_messages()
    inst = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in inst_nb.cells}
    named = 0
    for cell in released_nb.cells:
        nbg = cell.metadata.get("nbgrader", {})
        src_cell = inst.get(nbg.get("grade_id"))
        if cell.cell_type != "code" or not nbg.get("solution") or src_cell is None:
            continue
        funcs = [enclosing_python_function(src_cell.source, r.begin, nb_id)
                 for r in find_regions(src_cell.source, "python", nb_id) if r.kind == "SOLUTION"]
        lines = cell.source.split("\n")
        stubs = [i for i, line in enumerate(lines) if line.strip() == NB_STUB_LINE]
        if len(stubs) != len(funcs):
            raise SystemExit(f"{nb_id}: cell {nbg.get('grade_id')} has {len(funcs)} solution "
                             f"regions but {len(stubs)} stubs after generate_assignment")
        for i, func in zip(stubs, funcs):
            msg = messages.get((nb_id, f"cell:{nbg['grade_id']}:{func}"))
            if msg:
                lines[i] = lines[i].replace(NB_STUB_LINE, f"raise NotImplementedError({msg!r})")
                named += 1
        cell.source = "\n".join(lines)
    return named


def generate_notebooks(repo: Path, course_root: Path, out: Path, names) -> dict:
    """nbgrader generate_assignment for each notebook; returns {name: notebook metadata}."""
    source_root = course_root / SOURCE_DIR
    nb_release_root = course_root / NB_RELEASE_DIR
    for d in (source_root, nb_release_root):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    meta = {}
    for name in names:
        nb_path = repo / "notebooks" / f"{name}.ipynb"
        nb = nbformat.read(nb_path, as_version=4)
        meta[name] = dict(nb.metadata.get("needle_quant", {}))
        (source_root / name).mkdir()
        shutil.copy2(nb_path, source_root / name / f"{name}.ipynb")
        res = nbgrader(["generate_assignment", name, "--force"], course_root, capture=True,
                       check=False)
        produced = nb_release_root / name / f"{name}.ipynb"
        if res.returncode != 0 or not produced.exists():
            raise SystemExit(f"nbgrader generate_assignment {name} failed:\n{res.stdout[-3000:]}")
        (out / "notebooks").mkdir(parents=True, exist_ok=True)
        released = nbformat.read(produced, as_version=4)
        name_notebook_stubs(nb, released, name)
        nbformat.write(released, out / "notebooks" / f"{name}.ipynb")
        print(f"  notebook {name}: {_graded_summary(nb)}")
    return meta


def _graded_summary(nb) -> str:
    auto = manual = 0.0
    for cell in nb.cells:
        nbg = cell.metadata.get("nbgrader", {})
        if nbg.get("grade"):
            if nbg.get("solution"):
                manual += float(nbg.get("points", 0))
            else:
                auto += float(nbg.get("points", 0))
    return f"{auto:g} autograded + {manual:g} manual points"


def release(repo: Path = REPO, out: Path | None = None, course_root: Path | None = None,
            names=None) -> dict:
    repo = Path(repo).resolve()
    out = Path(out or repo / "release").resolve()
    course_root = Path(course_root or repo).resolve()
    names = list(names) if names else notebook_names(repo / "notebooks")
    t0 = time.time()
    marked = scan_library(repo)
    problems = check_manifest(repo)
    if problems:
        raise SystemExit("course/manifest.py does not match the solution regions:\n  "
                         + "\n  ".join(problems))
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        copy_library(repo, tmp, marked)
        nb_meta = generate_notebooks(repo, course_root, tmp, names)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    manifest = {
        "student_files": sorted(rel for rel, regs in marked.items()
                                if any(r.kind == "SOLUTION" for r in regs)),
        "regions": {rel: sum(r.kind == "SOLUTION" for r in regs) for rel, regs in marked.items()},
        "hidden_test_files": sorted(rel for rel, regs in marked.items()
                                    if any(r.kind == "HIDDEN TESTS" for r in regs)),
        "assignments": _assignments(nb_meta),
        "release_dir": str(out),
        "reference_dir": str(repo),
    }
    man_path = course_root / MANIFEST
    man_path.parent.mkdir(parents=True, exist_ok=True)
    man_path.write_text(json.dumps(manifest, indent=2) + "\n")
    n_regions = sum(manifest["regions"].values())
    print(f"release: {out} ({len(walk_repo(out))} files; {n_regions} solution regions stripped in "
          f"{len(manifest['student_files'])} library files; {len(names)} notebooks) "
          f"in {time.time() - t0:.1f}s")
    return manifest


def _assignments(nb_meta: dict) -> dict:
    """Per notebook: its metadata plus what the course manifest derives for grading."""
    M = course_manifest()
    out = {}
    for name, meta in nb_meta.items():
        try:
            entry = M.notebook(name)
        except KeyError:
            out[name] = dict(meta)
            continue
        out[name] = {**meta, "title": entry["title"],
                     "library_files": M.submission_files(name),
                     "submission_files": M.submission_files(name),
                     "own_files": M.own_files(name),
                     "exercises": [{**ex, "message": M.stub_message(name, ex),
                                    "messages": M.stub_messages(name, ex)}
                                   for _, ex in M.exercises(name)]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Build the student release (release/).")
    ap.add_argument("--out", type=Path, help="release directory (default: <repo>/release)")
    ap.add_argument("--course-root", type=Path,
                    help="nbgrader course root holding build/course (default: the repository)")
    ap.add_argument("notebooks", nargs="*", help="notebook names (default: all)")
    args = ap.parse_args(argv)
    release(REPO, args.out, args.course_root, args.notebooks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
