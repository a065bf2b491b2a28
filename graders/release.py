"""Build the student release: ``python -m graders.release`` (``make release``).

1. Every library, native and test file of the repository is copied to ``release/``, with its
   solution regions replaced by stubs and its hidden tests removed (graders/strip.py). Build
   outputs, the virtual environment, grader tooling and student/grader state are never copied
   (graders/course.py lists them).
2. Every notebook ``notebooks/<name>.ipynb`` becomes nbgrader assignment ``<name>``:
   ``nbgrader generate_assignment`` writes the student version (solutions cleared, hidden tests
   removed, outputs cleared, cells locked and checksummed), which lands in
   ``release/notebooks/<name>.ipynb``.
3. ``build/course/manifest.json`` records the library files that carry solution regions (the
   files a submission may replace) and the notebooks' metadata.

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

from .course import (MANIFEST, NB_RELEASE_DIR, REPO, SOURCE_DIR, nbgrader, notebook_names,
                     walk_repo)
from .strip import StripError, find_regions, language_of, strip_source


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
            dest.write_text(strip_source(text, language_of(rel), rel), encoding="utf-8")
            shutil.copymode(src, dest)
        else:
            shutil.copy2(src, dest)
    # Students get their own README (how to work through the course), not the instructor's.
    student_readme = repo / "graders" / "STUDENT_README.md"
    if student_readme.exists():
        shutil.copy2(student_readme, out / "README.md")


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
        shutil.copy2(produced, out / "notebooks" / f"{name}.ipynb")
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
        "assignments": nb_meta,
        "release_dir": str(out),
    }
    man_path = course_root / MANIFEST
    man_path.parent.mkdir(parents=True, exist_ok=True)
    man_path.write_text(json.dumps(manifest, indent=2) + "\n")
    n_regions = sum(manifest["regions"].values())
    print(f"release: {out} ({len(walk_repo(out))} files; {n_regions} solution regions stripped in "
          f"{len(manifest['student_files'])} library files; {len(names)} notebooks) "
          f"in {time.time() - t0:.1f}s")
    return manifest


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
