"""Paths and conventions shared by the release, autograde, feedback and pipeline-check tools.

Course layout (relative to a course root; the repository for ``make release/autograde``):

    build/course/source/<assignment>/<assignment>.ipynb   instructor notebooks (nbgrader source)
    build/course/release/<assignment>/<assignment>.ipynb  student notebooks (generate_assignment)
    build/course/gradebook.db                             nbgrader gradebook
    build/course/manifest.json                            derived from course/manifest.py:
                                                          files, exercises, stub messages
    submitted/<student>/<assignment>/                     a submission (``make submit`` archive
                                                          unpacked): the notebook, the library
                                                          files of submission_files() at their
                                                          repository paths, SHA256SUMS
    autograded/<student>/<assignment>/, feedback/...      nbgrader outputs
    graders/grades.csv                                    exported grades

One assignment per notebook; the assignment id is the notebook name (e.g. 03_quant_basics).
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GRADERS = REPO / "graders"
NOTEBOOKS = REPO / "notebooks"
CONFIG = GRADERS / "nbgrader_config.py"

COURSE_ID = "needle-quant"
SOURCE_DIR = "build/course/source"
NB_RELEASE_DIR = "build/course/release"
SUBMITTED_DIR = "submitted"
AUTOGRADED_DIR = "autograded"
FEEDBACK_DIR = "feedback"
GRADEBOOK = "build/course/gradebook.db"
MANIFEST = "build/course/manifest.json"

# Never copied into release/: build outputs, instructor-only tooling, student/grader state.
# Names excluded wherever they appear:
EXCLUDE_NAMES = {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis",
                 ".ipynb_checkpoints", "_strip_tmp", "gradebook.db", ".installed"}
# Top-level entries of the repository (a package may have a subpackage named e.g. "data"):
EXCLUDE_TOP = {"build", "release", "release.tmp", "submitted", "autograded", "feedback",
               "graders", "data", ".ci", "bench", "requirements-dev.txt", "environment.yml"}
EXCLUDE_GLOBS = ["*.so", "*.o", "*.pyc", "*.egg-info", "*.log", "*.tmp", ".nfs*", "*~"]
# Instructor-only or generated paths inside released directories.
EXCLUDE_PATHS = {"tests/test_release.py", "tests/test_grading_integrity.py", "bench/results", "tests/test_student_path.py",
                 "tests/test_colab_emulation.py", "course/Makefile.student"}
# File suffixes whose solution regions the release tool strips (everything else is copied).
TEXT_SUFFIXES = {".py", ".cc", ".cpp", ".cxx", ".h", ".hpp", ".cu", ".cuh", ".md", ".txt",
                 ".cfg", ".toml", ".yml", ".yaml", ".json", ".ipynb", ".sh", ".nbsrc", ""}


def excluded(rel: str) -> bool:
    """Whether a repository-relative path stays out of release/."""
    parts = Path(rel).parts
    if rel in EXCLUDE_PATHS or parts[0] in EXCLUDE_TOP or any(p in EXCLUDE_NAMES for p in parts):
        return True
    name = parts[-1]
    return any(fnmatch.fnmatch(name, g) for g in EXCLUDE_GLOBS)


def walk_repo(root: Path):
    """Repository-relative paths (str, sorted) of the files a release may contain."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        dirnames[:] = sorted(d for d in dirnames
                             if not excluded(os.path.join(rel_dir, d) if rel_dir else d))
        for f in sorted(filenames):
            rel = os.path.join(rel_dir, f) if rel_dir else f
            if not excluded(rel) and not os.path.islink(os.path.join(dirpath, f)):
                out.append(rel)
    return out


def notebook_names(nb_dir: Path = NOTEBOOKS):
    return sorted(p.stem for p in nb_dir.glob("*.ipynb"))


def load_manifest(root: Path = REPO) -> dict:
    path = Path(root) / MANIFEST
    if not path.exists():
        raise SystemExit(f"{path} not found: run `make release` first")
    return json.loads(path.read_text())


def tool_path() -> str:
    """PATH with this interpreter's script directories first: nbgrader runs the `alembic`
    command (gradebook migrations) and must find the one installed next to it."""
    dirs = [os.path.dirname(sys.executable), sysconfig.get_path("scripts")]
    try:
        dirs.append(sysconfig.get_path("scripts", f"{os.name}_user"))
    except KeyError:
        pass
    return os.pathsep.join(dict.fromkeys(d for d in dirs if d)) + os.pathsep + \
        os.environ.get("PATH", "")


def nbgrader(args, root: Path, extra=(), env=None, check=True, capture=False):
    """Run an nbgrader command for the course rooted at ``root``; returns CompletedProcess."""
    root = Path(root).resolve()
    cmd = [sys.executable, "-m", "nbgrader", *args,
           f"--JupyterApp.config_file={CONFIG}",
           f"--CourseDirectory.root={root}",
           f"--CourseDirectory.db_url=sqlite:///{root / GRADEBOOK}",
           *extra]
    full_env = dict(os.environ)
    full_env["PATH"] = tool_path()
    if env:
        full_env.update(env)
    res = subprocess.run(cmd, cwd=root, env=full_env, text=True,
                         stdout=subprocess.PIPE if capture else None,
                         stderr=subprocess.STDOUT if capture else None)
    if check and res.returncode != 0:
        out = res.stdout[-4000:] if capture and res.stdout else ""
        raise SystemExit(f"nbgrader {' '.join(args)} failed (exit {res.returncode})\n{out}")
    return res


# ---------------------------------------------------------------------------------- manifest
# The course manifest (course/manifest.py) names every exercise; these helpers tie it to the
# solution regions of the instructor's tree and check that the two agree.

def course_manifest():
    """The course manifest module (course/manifest.py of this repository)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from course import manifest
    return manifest


def solution_regions(repo: Path = REPO) -> list[dict]:
    """Every solution region of the instructor's tree, in file order:
    {"where": "<file>:<function>" or "cell:<grade id>:<function>", "notebook": id or None,
    "file": repository path, "line": 1-based line of its BEGIN marker}."""
    import nbformat
    from .strip import enclosing_cpp_function, enclosing_python_function, find_regions, \
        language_of
    repo = Path(repo)
    out = []
    for rel in walk_repo(repo):
        lang = language_of(rel)
        if lang is None or rel.startswith("notebooks/"):
            continue
        text = (repo / rel).read_text(encoding="utf-8", errors="replace")
        for r in find_regions(text, lang, rel):
            if r.kind != "SOLUTION":
                continue
            if lang == "python":
                func = enclosing_python_function(text, r.begin, rel)
            else:
                before = "".join(text.splitlines(keepends=True)[:r.begin - 1])
                func = enclosing_cpp_function(before)[0]
            out.append({"where": f"{rel}:{func}", "notebook": None, "file": rel, "line": r.begin})
    for path in sorted((repo / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(str(path), as_version=4)
        for cell in nb.cells:
            nbg = cell.metadata.get("nbgrader", {})
            if cell.cell_type != "code" or not nbg.get("solution"):
                continue
            for r in find_regions(cell.source, "python", path.name):
                if r.kind == "SOLUTION":
                    func = enclosing_python_function(cell.source, r.begin, path.name)
                    out.append({"where": f"cell:{nbg['grade_id']}:{func}", "notebook": path.stem,
                                "file": f"notebooks/{path.name}", "line": r.begin})
    return out


def _test_cells(nb_path: Path) -> set:
    import nbformat
    nb = nbformat.read(str(nb_path), as_version=4)
    return {c.metadata["nbgrader"]["grade_id"] for c in nb.cells if c.cell_type == "code"
            and c.metadata.get("nbgrader", {}).get("grade")}


def _pytest_names(repo: Path, prefix: str) -> list[str]:
    """Test functions of tests/<file> whose node id starts with ``prefix`` ('file::name', or
    'file::name[param-' for some parametrizations of one test)."""
    import ast
    rel, _, name = prefix.partition("::")
    if "[" in name:         # the function part must be whole; the parameters are matched at run time
        base = name.split("[", 1)[0]
        return [n for n in _pytest_names(repo, f"{rel}::{base}") if n == base]
    path = repo / rel
    if not path.is_file():
        return []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.name.startswith("test") and n.name.startswith(name)]


def check_manifest(repo: Path = REPO) -> list[str]:
    """Disagreements between course/manifest.py and the instructor's tree (empty when sound):
    a solution region without exercise, an exercise without region or visible test, a test
    that does not exist, a native file shared by notebooks, a notebook whose tests use a file
    holding only later notebooks' exercises (they would run stubs)."""
    M = course_manifest()
    repo = Path(repo)
    errors = []
    listed = [nb["id"] for nb in M.NOTEBOOKS]
    present = notebook_names(repo / "notebooks")
    if listed != present:
        errors.append(f"course/manifest.py lists notebooks {listed}, notebooks/ holds {present}")
    by_where, ids = {}, set()
    for nb_id, ex in M.exercises():
        for where in M.wheres(ex):
            key = (nb_id, where) if where.startswith("cell:") else (None, where)
            if key in by_where:
                errors.append(f"exercise {ex['id']}: {where} is also exercise "
                              f"{by_where[key][0]['id']}")
            by_where[key] = (ex, where)
        if ex["id"] in ids or not ex["id"].startswith(f"{int(nb_id[:2])}."):
            errors.append(f"exercise id {ex['id']!r} of {nb_id}: ids are unique and start with "
                          f"the notebook number ({int(nb_id[:2])}.)")
        ids.add(ex["id"])
        if not ex["tests"]:
            errors.append(f"exercise {ex['id']} {ex['name']}: no visible test cell")
        nb_path = repo / "notebooks" / f"{nb_id}.ipynb"
        if nb_path.exists():
            for t in set(ex["tests"]) - _test_cells(nb_path):
                errors.append(f"exercise {ex['id']}: {t!r} is not a test cell of {nb_id}")
        for p in ex["pytest"]:
            if not _pytest_names(repo, p):
                errors.append(f"exercise {ex['id']}: no library test matches {p!r}")
    regions = solution_regions(repo)
    seen = set()
    for r in regions:
        key = (r["notebook"], r["where"])
        seen.add(key)
        if key not in by_where:
            errors.append(f"{r['file']}:{r['line']}: the solution region of {r['where']} belongs "
                          f"to no exercise of course/manifest.py")
    for key, ex in by_where.items():
        if key not in seen:
            ex, where = ex
            errors.append(f"exercise {ex['id']} {ex['name']}: no solution region at {where}")
    owners = {}
    for nb_id, ex in M.exercises():
        f = M.library_file(ex)
        if f:
            owners.setdefault(f, set()).add(nb_id)
    for f, nbs in sorted(owners.items()):
        if len(nbs) > 1 and not f.endswith(".py"):
            errors.append(f"{f} holds exercises of {sorted(nbs)}: a native file belongs to one "
                          f"notebook (the grader replaces earlier notebooks' code file by file)")
    for k, nb in enumerate(M.NOTEBOOKS):
        for f in nb.get("uses", []):
            if not (repo / f).exists():
                errors.append(f"{nb['id']} uses {f}, which does not exist")
            elif f in owners and min(listed.index(n) for n in owners[f]) > k:
                errors.append(f"{nb['id']} uses {f}, which holds only exercises of later "
                              f"notebooks {sorted(owners[f])}: its tests would run stubs")
        missing = set(M.own_files(nb["id"])) - set(M.submission_files(nb["id"]))
        if missing:
            errors.append(f"{nb['id']}: grading needs {sorted(missing)}, which its submission "
                          f"does not carry")
    return errors


#: limits on an unpacked submission (a notebook with figures is a few MiB, a library file KiBs)
MAX_SUBMITTED_FILE = 64 << 20
MAX_SUBMISSION = 256 << 20


#: the file, beside an unpacked submission, where the grader notes the archive's problems
UNPACK_PROBLEMS = "UNPACK_PROBLEMS.txt"


def unpack_submission(archive: Path, submitted_root: Path, student: str) -> tuple[Path, list]:
    """Unpack a ``make submit`` archive into ``submitted_root/<student>/<assignment>/``.

    Returns (the assignment folder, problems): problems names files whose checksum does not
    match ``SHA256SUMS``, files the sums list but the archive lacks, and files without a sum.
    Members outside one top folder, absolute paths or ``..`` are refused (ValueError)."""
    import hashlib
    import zipfile
    if not student or "/" in student or "\\" in student or student in (".", ".."):
        raise ValueError(f"not a student folder name: {student!r}")
    archive = Path(archive)
    with zipfile.ZipFile(archive) as z:
        names = [n for n in z.namelist() if not n.endswith("/")]
        tops = {n.split("/", 1)[0] for n in names}
        # every component a plain name: "./03_x/..." would make the student's own folder the
        # destination (and delete their other notebooks), "" or ".." escape it
        if len(tops) != 1 or any(n.startswith("/") or "/" not in n or "\\" in n or any(
                part in ("", ".", "..") for part in n.split("/")) for n in names) or \
                not re.fullmatch(r"\d\d_[A-Za-z0-9_]+", next(iter(tops))):
            raise ValueError(f"{archive}: not a course submission (expected one folder "
                             f"<notebook>/ with relative paths), found {sorted(tops)[:3]}")
        assignment = tops.pop()
        dest = Path(submitted_root) / student / assignment
        files = {}
        total = 0
        for n in names:
            # read with a cap: a member's declared size can lie (a zip bomb)
            with z.open(n) as member:
                data = member.read(MAX_SUBMITTED_FILE + 1)
            total += len(data)
            if len(data) > MAX_SUBMITTED_FILE or total > MAX_SUBMISSION:
                raise ValueError(f"{archive}: {n} makes the submission larger than the limit "
                                 f"({MAX_SUBMITTED_FILE >> 20} MiB a file, "
                                 f"{MAX_SUBMISSION >> 20} MiB in all)")
            rel = n.split("/", 1)[1]
            if rel == UNPACK_PROBLEMS:    # the grader's own notes: a student's copy is dropped
                continue
            files[rel] = data
    # everything read and checked: only now replace the previous upload
    if dest.exists():
        shutil.rmtree(dest)
    for rel, data in files.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(data)
    problems = []
    sums = {}
    for line in files.pop("SHA256SUMS", b"").decode(errors="replace").splitlines():
        digest, _, rel = line.partition("  ")
        sums[rel.strip()] = digest.strip()
    if not sums:
        problems.append("no SHA256SUMS in the archive")
    for rel, digest in sums.items():
        if rel not in files:
            problems.append(f"{rel}: listed in SHA256SUMS but not in the archive")
        elif hashlib.sha256(files[rel]).hexdigest() != digest:
            problems.append(f"{rel}: checksum mismatch (changed after `make submit`)")
    problems += [f"{rel}: not listed in SHA256SUMS" for rel in files if sums and rel not in sums]
    if any(n.split("/", 1)[1] == UNPACK_PROBLEMS for n in names):
        problems.append(f"{UNPACK_PROBLEMS}: a name the grader keeps for its own notes; the "
                        f"archive's copy was not unpacked")
    return dest, problems


def reference_notebook(name: str, release_dir: Path):
    """The release notebook ``name`` with every solution cell filled in from the instructor's
    notebook (what a student who solved it all would hand in)."""
    import nbformat
    inst = {c.metadata.get("nbgrader", {}).get("grade_id"): c
            for c in nbformat.read(str(REPO / "notebooks" / f"{name}.ipynb"), as_version=4).cells}
    nb = nbformat.read(str(Path(release_dir) / "notebooks" / f"{name}.ipynb"), as_version=4)
    for cell in nb.cells:
        nbg = cell.metadata.get("nbgrader", {})
        if nbg.get("solution") and nbg.get("grade_id") in inst:
            cell.source = inst[nbg["grade_id"]].source
    return nb
