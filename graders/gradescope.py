"""Gradescope autograders: ``python -m graders.gradescope build`` (``make gradescope``).

Gradescope grades every submission in a fresh container built from an uploaded zip
(https://gradescope-autograders.readthedocs.io/en/latest/specs/): the zip is unpacked into
``/autograder/source``, ``setup.sh`` runs once when the image is built, and ``run_autograder``
runs per submission with the upload in ``/autograder/submission`` and must write
``/autograder/results/results.json``.

``build`` writes ``build/gradescope/<assignment>.zip`` per assignment, holding

    setup.sh, run_autograder     the two entry points of the specification
    needle-quant/release/        the student release (stubs, visible tests)
    needle-quant/graders/        the grading code (the same modules as local grading)
    needle-quant/grading/        the gradebook (assignments, locked and hidden tests),
                                 the manifest and the instructor notebook of the assignment
    needle-quant/course/         the course manifest package (exercises, grading policy)
    needle-quant/reference/      the course's version of the library files with exercises
                                 (the grading policy uses it for earlier notebooks' exercises)
    needle-quant/gradescope.json which assignment, which test cells hold hidden tests

``run`` (called by run_autograder) lays the upload out as ``submitted/<student>/<assignment>/``
in a scratch course root and grades it with graders.batch.grade_class, exactly as
``make autograde`` does; each autograded test cell becomes one Gradescope test. Cells with
hidden tests are reported with visibility ``after_due_date`` and without traceback. The native
build log goes into the top-level output. The container root is ``--root`` (default
``$AUTOGRADER_ROOT`` or ``/autograder``), so the whole flow is tested without Gradescope.
``warm`` (called by setup.sh) compiles the release's native modules into the image's cache,
so a submission that does not change native code is graded without compiling.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import stat
import sys
import tarfile
import time
import zipfile
from pathlib import Path

PAYLOAD = "needle-quant"
#: instructor-only grader modules (wrong solutions, checks, notebook sources) stay out
NOT_SHIPPED = {"audit_catalog.py", "check_pipeline.py", "check_scale.py", "nbbuild.py"}
STUDENT = "student"
MAX_OUTPUT = 8000          # characters of one test's output shown on Gradescope
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

SETUP_SH = """#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder image.
set -euo pipefail
SRC="$(cd "$(dirname "$0")" && pwd)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q python3 python3-venv python3-dev g++ cmake make
python3 -m venv /autograder/venv
/autograder/venv/bin/pip install -q --upgrade pip
/autograder/venv/bin/pip install -q -r "$SRC/{payload}/requirements.txt" nbgrader tqdm
# Compile the release's native modules once, into the image: a submission that does not
# change native code is graded without compiling.
cd "$SRC/{payload}" && /autograder/venv/bin/python -m graders.gradescope warm
# The MNIST data the notebooks use, inside the image (graders run without network).
cd "$SRC/{payload}/release" && NEEDLE_DATA_DIR=/autograder/data /autograder/venv/bin/python -c \
  "from needle.data.mnist import load_mnist; load_mnist('train'); load_mnist('test')" \
  || echo "MNIST not downloaded: the notebooks that need it will fail"
"""

RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope runs this per submission (upload in $ROOT/submission, results in $ROOT/results).
ROOT="${{AUTOGRADER_ROOT:-/autograder}}"
PY="${{AUTOGRADER_PYTHON:-/autograder/venv/bin/python}}"
[ -x "$PY" ] || PY=python3
export NEEDLE_DATA_DIR="${{NEEDLE_DATA_DIR:-/autograder/data}}"
cd "$ROOT/source/{payload}" && exec "$PY" -m graders.gradescope run --root "$ROOT"
"""


# ------------------------------------------------------------------------------ build

def hidden_test_cells(notebook: Path) -> list[str]:
    """grade_ids of the instructor notebook's test cells that hold hidden tests."""
    import nbformat
    from .strip import find_regions
    out = []
    for cell in nbformat.read(str(notebook), as_version=4).cells:
        nbg = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code" and nbg.get("grade") and not nbg.get("solution"):
            if any(r.kind == "HIDDEN TESTS" for r in find_regions(cell.source, "python")):
                out.append(nbg.get("grade_id"))
    return out


def _add_tree(zf: zipfile.ZipFile, src: Path, arc: str, skip=()) -> None:
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_symlink() or not path.is_file() or rel.parts[0] in skip \
                or "__pycache__" in rel.parts:
            continue
        _add_file(zf, path, f"{arc}/{rel.as_posix()}")


def _add_file(zf: zipfile.ZipFile, path: Path, arc: str) -> None:
    _add_bytes(zf, path.read_bytes(), arc, executable=os.access(path, os.X_OK))


def _add_bytes(zf: zipfile.ZipFile, data: bytes, arc: str, executable=False) -> None:
    info = zipfile.ZipInfo(arc, date_time=(2020, 1, 1, 0, 0, 0))
    info.external_attr = ((0o755 if executable else 0o644) | stat.S_IFREG) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    zf.writestr(info, data)


def build_zip(root: Path, assignment: str, out_dir: Path) -> Path:
    """Write ``out_dir/<assignment>.zip`` (see the module docstring); returns its path."""
    from .batch import make_template
    from .course import (GRADEBOOK, GRADERS, MANIFEST, NB_RELEASE_DIR, REPO, SOURCE_DIR,
                         load_manifest)
    root = Path(root).resolve()
    manifest = load_manifest(root)
    if assignment not in manifest["assignments"]:
        raise SystemExit(f"unknown assignment {assignment!r}: the release has "
                         f"{', '.join(manifest['assignments'])}")
    release_dir = Path(manifest["release_dir"])
    source_nb = root / SOURCE_DIR / assignment / f"{assignment}.ipynb"
    if not source_nb.exists():
        raise SystemExit(f"{source_nb} not found: run `make release` first")
    out_dir.mkdir(parents=True, exist_ok=True)
    template = out_dir / f".{assignment}-gradebook.db"
    make_template(root / GRADEBOOK, template)
    config = {"assignment": assignment, "hidden_cells": hidden_test_cells(source_nb),
              "built": time.strftime("%Y-%m-%dT%H:%M:%S")}
    zip_path = out_dir / f"{assignment}.zip"
    tmp = zip_path.with_name(zip_path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        _add_bytes(zf, SETUP_SH.format(payload=PAYLOAD).encode(), "setup.sh", executable=True)
        _add_bytes(zf, RUN_AUTOGRADER.format(payload=PAYLOAD).encode(), "run_autograder",
                   executable=True)
        _add_tree(zf, release_dir, f"{PAYLOAD}/release", skip=("build",))
        for path in sorted(GRADERS.glob("*.py")):
            if path.name not in NOT_SHIPPED:
                _add_file(zf, path, f"{PAYLOAD}/graders/{path.name}")
        _add_file(zf, template, f"{PAYLOAD}/grading/{GRADEBOOK}")
        _add_file(zf, source_nb,
                  f"{PAYLOAD}/grading/{SOURCE_DIR}/{assignment}/{assignment}.ipynb")
        student_nb = root / NB_RELEASE_DIR / assignment / f"{assignment}.ipynb"
        _add_file(zf, student_nb,
                  f"{PAYLOAD}/grading/{NB_RELEASE_DIR}/{assignment}/{assignment}.ipynb")
        # set to the unpacked release and reference at run time
        shipped = dict(manifest, release_dir="", reference_dir="")
        _add_bytes(zf, (json.dumps(shipped, indent=1) + "\n").encode(),
                   f"{PAYLOAD}/grading/{MANIFEST}")
        if (REPO / "course").is_dir():
            for path in sorted((REPO / "course").glob("*.py")):
                _add_file(zf, path, f"{PAYLOAD}/course/{path.name}")
        reference = Path(manifest.get("reference_dir") or REPO)
        for rel in manifest["student_files"]:
            _add_file(zf, reference / rel, f"{PAYLOAD}/reference/{rel}")
        _add_file(zf, REPO / "requirements.txt", f"{PAYLOAD}/requirements.txt")
        _add_bytes(zf, (json.dumps(config, indent=1) + "\n").encode(),
                   f"{PAYLOAD}/gradescope.json")
    template.unlink()
    os.replace(tmp, zip_path)
    return zip_path


# ------------------------------------------------------------------------------ run

def _safe_extract(archive: Path, dest: Path) -> None:
    """Unpack a .zip/.tar(.gz) upload; members escaping ``dest`` or links are refused."""
    dest = dest.resolve()

    def check(name):
        target = (dest / name).resolve()
        if not str(target).startswith(str(dest) + os.sep):
            raise ValueError(f"archive {archive.name} holds a path outside it: {name!r}")
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for m in zf.infolist():
                check(m.filename)
                if stat.S_ISLNK(m.external_attr >> 16):
                    continue
                zf.extract(m, dest)
    else:
        with tarfile.open(archive) as tf:
            for m in tf.getmembers():
                check(m.name)
                if m.isfile() or m.isdir():
                    tf.extract(m, dest, set_attrs=False)


def layout_upload(upload: Path, dest: Path, assignment: str, manifest: dict) -> list[str]:
    """Copy the files of a Gradescope upload that grading uses into ``dest`` (a submission
    folder), wherever the upload put them: at their repository paths (a repository or the
    student tool's archive), flattened to their names (drag and drop), or inside one archive.
    Returns notes for the output (what was taken from where)."""
    from .workspace import plain_file
    notes = []
    upload = Path(upload)
    files = [p for p in upload.rglob("*") if plain_file(upload, p.relative_to(upload))]
    archives = [p for p in files if p.suffix in (".zip", ".tgz", ".gz", ".tar")]
    if archives and not any(p.name == f"{assignment}.ipynb" for p in files):
        unpacked = dest.parent / (dest.name + ".unpacked")
        shutil.rmtree(unpacked, ignore_errors=True)
        unpacked.mkdir(parents=True)
        _safe_extract(archives[0], unpacked)
        notes.append(f"unpacked {archives[0].name}")
        upload = unpacked
        files = [p for p in upload.rglob("*") if plain_file(upload, p.relative_to(upload))]
    wanted = {f"{assignment}.ipynb": [f"{assignment}.ipynb", f"notebooks/{assignment}.ipynb"]}
    for rel in manifest["student_files"]:
        wanted[rel] = [rel]
    dest.mkdir(parents=True, exist_ok=True)
    for rel, candidates in wanted.items():
        found = None
        for cand in candidates:
            hits = [p for p in files if p.relative_to(upload).as_posix().endswith(cand)
                    and (p.relative_to(upload).as_posix() == cand
                         or p.relative_to(upload).as_posix().endswith("/" + cand))]
            if hits:
                found = min(hits, key=lambda p: len(p.parts))
                break
        if found is None:      # flattened upload: match by file name when it is unambiguous
            same_name = [r for r in wanted if Path(r).name == Path(rel).name]
            hits = [p for p in files if p.name == Path(rel).name]
            if len(same_name) == 1 and len(hits) == 1:
                found = hits[0]
        if found is not None:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(found, dest / rel)
            if found.relative_to(upload).as_posix() != rel:
                notes.append(f"{found.relative_to(upload).as_posix()} used as {rel}")
    return notes


def _cell_outputs(nb_path: Path) -> dict:
    """{grade_id: text} of the error outputs of an autograded notebook's cells."""
    import nbformat
    out = {}
    if not nb_path.exists():
        return out
    for cell in nbformat.read(str(nb_path), as_version=4).cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        errs = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if gid and errs:
            out[gid] = errs
    return out


def _test_output(errs, hidden: bool, passed: bool) -> str:
    if passed:
        return "passed"
    if not errs:
        return "no points (see the notebook's output)"
    e = errs[0]
    head = f"{e.get('ename')}: {_ANSI.sub('', str(e.get('evalue', '')))}"
    if hidden:       # a traceback would quote the hidden test
        return head[:MAX_OUTPUT]
    tb = _ANSI.sub("", "\n".join(e.get("traceback", [])))
    return (tb[-MAX_OUTPUT:] if tb else head[:MAX_OUTPUT])


def results_json(job, config: dict, errors: dict, build_log: str, notes: list[str]) -> dict:
    """Gradescope's results.json for one graded job (graders.batch.Job)."""
    hidden = set(config.get("hidden_cells", []))
    tests, manual = [], 0.0
    for i, (nb, cell, score, max_score, auto) in enumerate(job.cells, start=1):
        if not auto:
            manual += max_score
            continue
        got = 0.0 if job.status == "error" else float(score or 0)
        passed = job.status != "error" and got >= max_score
        output = (f"not graded: {job.reason}" if job.status == "error"
                  else _test_output(errors.get(cell), cell in hidden, passed))
        tests.append({"name": f"{nb}: {cell}", "number": str(i), "score": got,
                      "max_score": float(max_score),
                      "status": "passed" if passed else "failed", "output": output,
                      "visibility": "after_due_date" if cell in hidden else "visible"})
    lines = [f"{config['assignment']}: {sum(t['score'] for t in tests):g}/"
             f"{sum(t['max_score'] for t in tests):g} autograded points"]
    if job.status == "error":
        lines.append(f"grading failed: {job.reason}")
    if manual:
        lines.append(f"{manual:g} points of written answers are graded by hand.")
    if hidden:
        lines.append("Tests marked 'after the due date' also run hidden checks; their results "
                     "are shown after the due date.")
    lines += notes
    if build_log:
        lines += ["", "native build:", build_log.strip()[-MAX_OUTPUT:]]
    return {"score": sum(t["score"] for t in tests), "execution_time": round(job.seconds, 1),
            "output": "\n".join(lines), "visibility": "visible",
            "stdout_visibility": "hidden", "tests": tests}


def _write_results(root: Path, results: dict) -> None:
    """``root/results/results.json``, written whole (a temporary file, then a rename)."""
    out = root / "results" / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name("results.json.tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, out)


def run(root: Path, work: Path | None = None) -> dict:
    """Grade ``root/submission`` and write ``root/results/results.json``; returns the dict."""
    from .batch import GRADING, grade_class
    from .course import GRADEBOOK, MANIFEST, NB_RELEASE_DIR, SOURCE_DIR, SUBMITTED_DIR
    payload = Path(__file__).resolve().parents[1]
    root = Path(root).resolve()
    config = json.loads((payload / "gradescope.json").read_text())
    assignment = config["assignment"]
    course_src = payload / "grading"
    course = Path(work or root / "work").resolve() / "course"
    shutil.rmtree(course, ignore_errors=True)
    (course / GRADEBOOK).parent.mkdir(parents=True)
    shutil.copy2(course_src / GRADEBOOK, course / GRADEBOOK)
    shutil.copytree(course_src / SOURCE_DIR, course / SOURCE_DIR)
    shutil.copytree(course_src / NB_RELEASE_DIR, course / NB_RELEASE_DIR)
    manifest = json.loads((course_src / MANIFEST).read_text())
    manifest["release_dir"] = str(payload / "release")
    manifest["reference_dir"] = str(payload / "reference")
    (course / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    sub = course / SUBMITTED_DIR / STUDENT / assignment
    try:
        notes = layout_upload(root / "submission", sub, assignment, manifest)
    except (ValueError, OSError) as e:
        # an unusable upload (a path escaping the archive, an unreadable file) is reported
        # to the student, not a crash of the autograder without results
        results = {"score": 0.0, "execution_time": 0.0, "visibility": "visible",
                   "stdout_visibility": "hidden", "tests": [],
                   "output": f"{assignment}: not graded: the upload could not be read ({e})"}
        _write_results(root, results)
        return results
    cache = Path(os.environ.get("NEEDLE_GRADING_CACHE") or payload / "native_cache")
    jobs = grade_class(course, jobs=1, progress=False, out_dir=course / "reports",
                       cache_dir=cache, quiet=True)
    job = jobs[0]
    log_file = course / GRADING / "slots" / "0" / GRADING / "logs" / \
        f"{STUDENT}-{assignment}-build.log"
    build_log = log_file.read_text(errors="replace") if log_file.exists() else ""
    errors = _cell_outputs(course / "autograded" / STUDENT / assignment / f"{assignment}.ipynb")
    results = results_json(job, config, errors, build_log, notes)
    _write_results(root, results)
    return results


def warm() -> int:
    """Compile the release's native modules into the payload's cache (setup.sh)."""
    from .build_cache import BuildCache
    from .autograde import gpu_present
    payload = Path(__file__).resolve().parents[1]
    ws = payload / "work-warm"
    shutil.rmtree(ws, ignore_errors=True)
    shutil.copytree(payload / "release", ws)
    cache = BuildCache(Path(os.environ.get("NEEDLE_GRADING_CACHE") or payload / "native_cache"))
    ok = cache.build(ws, ws / "build.log", os.cpu_count() or 2, gpu_present())
    print((ws / "build.log").read_text(errors="replace")[-4000:])
    shutil.rmtree(ws, ignore_errors=True)
    return 0 if ok else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Gradescope autograders of the course.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write build/gradescope/<assignment>.zip")
    b.add_argument("assignments", nargs="*", help="default: every assignment of the release")
    b.add_argument("--out", type=Path, help="default: build/gradescope")
    r = sub.add_parser("run", help="grade <root>/submission (what run_autograder calls)")
    r.add_argument("--root", type=Path,
                   default=Path(os.environ.get("AUTOGRADER_ROOT", "/autograder")))
    r.add_argument("--work", type=Path, help="scratch folder (default <root>/work)")
    sub.add_parser("warm", help="compile the release's native modules (what setup.sh calls)")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        from .course import REPO, load_manifest
        names = args.assignments or list(load_manifest(REPO)["assignments"])
        for name in names:
            path = build_zip(REPO, name, args.out or REPO / "build" / "gradescope")
            print(f"  {name}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
        return 0
    if args.cmd == "warm":
        return warm()
    res = run(args.root, args.work)
    print(res["output"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
