"""Paths and conventions shared by the release, autograde, feedback and pipeline-check tools.

Course layout (relative to a course root; the repository for ``make release/autograde``):

    build/course/source/<assignment>/<assignment>.ipynb   instructor notebooks (nbgrader source)
    build/course/release/<assignment>/<assignment>.ipynb  student notebooks (generate_assignment)
    build/course/gradebook.db                             nbgrader gradebook
    build/course/manifest.json                            which library files students write
    submitted/<student>/<assignment>/                     a submission: the notebook plus the
                                                          student's versions of library files
                                                          at their repository paths
    autograded/<student>/<assignment>/, feedback/...      nbgrader outputs
    graders/grades.csv                                    exported grades

One assignment per notebook; the assignment id is the notebook name (e.g. 03_quant_basics).
"""
from __future__ import annotations

import fnmatch
import json
import os
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
               "graders", "data"}
EXCLUDE_GLOBS = ["*.so", "*.o", "*.pyc", "*.egg-info", "*.log", "*.tmp", ".nfs*", "*~"]
# Instructor-only or generated paths inside released directories.
EXCLUDE_PATHS = {"tests/test_release.py", "bench/results"}
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
