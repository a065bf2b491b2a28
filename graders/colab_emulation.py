"""Colab emulation: the release's notebooks, one fresh kernel each, as on a new Colab runtime.

``python -m graders.colab_emulation --release build/check/release`` (graders/check_pipeline.py
runs it as its section (f)):

* the kernel's interpreter is a virtual environment holding only what Colab preinstalls
  (numpy, matplotlib, torch CPU, ipykernel and what they need; none of the kit's other
  packages), cached under ``build/colab-venv-<hash of those requirements and the Python
  version>``; packages the current interpreter has are linked in, the others pip-installed;
* the working directory is a scratch folder standing in for ``/content``; a stub
  ``google.colab`` package (``drive.mount(path)`` links ``path`` to a scratch "Drive"), with
  ``COLAB_RELEASE_TAG`` set as on Colab; the clone source is a local bare clone of the release
  (``NEEDLE_COURSE_REPO``), so nothing reaches the network for it; the runtime's packages are
  installed by the setup cell from the package index as on Colab;
* phase 1 runs every release notebook in order: the first one clones, installs and builds;
  every error must be a stub's ('<function>: exercise <n.m> of notebook <id>');
* phase 2 writes the reference solutions into the "Drive" copy (library files and notebooks)
  and runs the notebooks from there: no error at all.

The runtime is a CPU one without nvcc (``NEEDLE_CUDA=0``): the setup cell builds the CUDA
kernels' host emulation with the host compiler instead of the CUDA backend, so notebook 06's
tests of the CUDA tile run there too (stub errors in phase 1, passing in phase 2);
``--cuda`` builds the real backend (for one architecture) when nvcc is present.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat

from .autograde import library_tests_hit_stubs
from .course import REPO, course_manifest, reference_notebook

COLAB_PACKAGES = ["numpy", "matplotlib", "torch==2.13.0", "ipykernel"]
STUB = re.compile(r"[\w.]+: exercise \d+\.\d+ of notebook \w+")

_FAKE_COLAB = '''"""Stand-in for Colab's google.colab.drive (emulation): mount(path) links path to the
scratch Drive given by NEEDLE_EMULATED_DRIVE."""
import os


def mount(mountpoint, force_remount=False, timeout_ms=120000, readonly=False):
    store = os.environ["NEEDLE_EMULATED_DRIVE"]
    os.makedirs(os.path.join(store, "MyDrive"), exist_ok=True)
    if os.path.islink(mountpoint) and os.readlink(mountpoint) == store:
        print("Drive already mounted at " + mountpoint + "; to attempt to forcibly remount, "
              "call drive.mount(\\"" + mountpoint + "\\", force_remount=True).")
        return
    os.makedirs(os.path.dirname(os.path.abspath(mountpoint)), exist_ok=True)
    os.symlink(store, mountpoint)
    print("Mounted at " + mountpoint)
'''


def _closure(names):
    """The installed distributions ``names`` need (their requirements, extras left out)."""
    from importlib import metadata
    seen, todo = {}, list(names)
    while todo:
        req = todo.pop()
        name = re.split(r"[<>=!~;\[ (]", req, maxsplit=1)[0].strip().lower().replace("_", "-")
        if name in seen or (";" in req and "extra" in req.split(";", 1)[1]):
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue                     # a platform-specific or optional requirement
        seen[name] = dist
        todo += dist.requires or []
    return list(seen.values())


def _link_packages(names, site: Path) -> None:
    """Make the installed distributions ``names`` (and what they need) importable from
    ``site`` by linking their top-level files: the same packages, installed in seconds."""
    for dist in _closure(names):
        base = Path(dist.locate_file(""))
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            src, dest = base / top, site / top
            if src.exists() and not dest.exists() and top not in ("__pycache__", "bin"):
                dest.symlink_to(src)


def colab_venv(build_dir: Path) -> Path:
    """The cached virtual environment with only Colab's preinstalled packages; its python.

    Packages this interpreter already has are linked in (with their dependencies, nothing
    else); the others are installed with pip."""
    from importlib import metadata
    key = hashlib.sha256((" ".join(COLAB_PACKAGES) + sys.version).encode()).hexdigest()[:12]
    venv = Path(build_dir) / f"colab-venv-{key}"
    py = venv / "bin" / "python"
    if (venv / ".complete").exists():
        return py
    if venv.exists():
        shutil.rmtree(venv)
    print(f"creating {venv} ({', '.join(COLAB_PACKAGES)}) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True,
                               check=True).stdout.strip())
    have, need = [], []
    for req in COLAB_PACKAGES:
        name, _, version = req.partition("==")
        try:
            ok = not version or metadata.version(name).split("+")[0] == version
        except metadata.PackageNotFoundError:
            ok = False
        (have if ok else need).append(req if not ok else name)
    _link_packages(have, site)
    if need:
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        *need], check=True)
    (venv / ".complete").write_text(" ".join(COLAB_PACKAGES) + "\n")
    return py


def bare_clone(release_dir: Path, dest: Path) -> Path:
    """A bare git repository holding the release as one commit (the "GitHub" of the course)."""
    work = dest.with_name(dest.name + ".work")
    for d in (work, dest):
        if d.exists():
            shutil.rmtree(d)
    shutil.copytree(release_dir, work)
    env = {**os.environ, "GIT_AUTHOR_NAME": "course", "GIT_AUTHOR_EMAIL": "course@example.org",
           "GIT_COMMITTER_NAME": "course", "GIT_COMMITTER_EMAIL": "course@example.org"}
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                ["git", "commit", "-q", "-m", "student release"]):
        subprocess.run(cmd, cwd=work, check=True, env=env, capture_output=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(dest)], check=True)
    shutil.rmtree(work)
    return dest


class Runtime:
    """Scratch folders and the kernel spec of one emulated Colab session."""

    def __init__(self, scratch: Path, python: Path, repo_url: Path, cuda: bool):
        self.scratch = Path(scratch)
        if self.scratch.exists():
            shutil.rmtree(self.scratch)
        self.content = self.scratch / "content"
        self.drive = self.scratch / "drive-store"
        fake = self.scratch / "fake-colab" / "google" / "colab"
        fake.mkdir(parents=True)
        (fake.parent / "__init__.py").write_text("")
        (fake / "__init__.py").write_text("")
        (fake / "drive.py").write_text(_FAKE_COLAB)
        self.content.mkdir(parents=True)
        self.drive.mkdir()
        kdir = self.scratch / "jupyter" / "kernels" / "colab"
        kdir.mkdir(parents=True)
        env = {"PYTHONPATH": str(fake.parent.parent), "COLAB_RELEASE_TAG": "emulated",
               "NEEDLE_EMULATED_DRIVE": str(self.drive),
               "NEEDLE_DRIVE_MOUNT": str(self.content / "drive"),
               "NEEDLE_COURSE_REPO": str(repo_url), "NEEDLE_CUDA": "1" if cuda else "0",
               "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1"}
        if os.environ.get("NEEDLE_DATA_DIR"):
            env["NEEDLE_DATA_DIR"] = os.environ["NEEDLE_DATA_DIR"]
        (kdir / "kernel.json").write_text(json.dumps({
            "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Colab (emulated)", "language": "python", "env": env}))
        self.copy = self.content / "drive" / "MyDrive" / course_manifest().COURSE["drive_dir"]

    def run(self, nb_path: Path, timeout: int = 900):
        """Run a notebook in a fresh kernel of this runtime (working directory /content);
        returns (the executed notebook, seconds)."""
        from nbclient import NotebookClient
        nb = nbformat.read(str(nb_path), as_version=4)
        old = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = str(self.scratch / "jupyter")
        # the kernel must not see the grader's or the instructor's setting
        saved = {k: os.environ.pop(k) for k in ("NEEDLE_ROOT",) if k in os.environ}
        t0 = time.time()
        try:
            NotebookClient(nb, timeout=timeout, allow_errors=True, kernel_name="colab",
                           resources={"metadata": {"path": str(self.content)}}).execute()
        finally:
            os.environ.update(saved)
            if old is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old
        return nb, time.time() - t0


def errors_of(nb):
    """[(cell grade id or index, ename, evalue)] of a notebook's error outputs."""
    out = []
    for i, cell in enumerate(nb.cells):
        gid = cell.metadata.get("nbgrader", {}).get("grade_id", f"cell {i}")
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                out.append((gid, o.get("ename"), str(o.get("evalue"))))
    return out


def emulate(release_dir: Path, work: Path, cuda: bool = False, log=print) -> dict:
    """Both phases; returns {"ok": bool, "problems": [...], "timings": {...}}."""
    release_dir, work = Path(release_dir), Path(work)
    M = course_manifest()
    names = [n["id"] for n in M.NOTEBOOKS if (release_dir / "notebooks" / f"{n['id']}.ipynb").exists()]
    t0 = time.time()
    python = colab_venv(REPO / "build")
    timings = {"venv": time.time() - t0}
    repo = bare_clone(release_dir, work / "student-repo.git")
    rt = Runtime(work / "runtime", python, repo, cuda)
    problems = []

    def allowed(name, gid, ename, evalue, phase):
        return phase == 1 and ((ename in ("NotImplementedError", "RuntimeError")
                                and STUB.search(evalue) is not None)
                               or library_tests_hit_stubs(ename, evalue))

    for phase in (1, 2):
        if phase == 2:
            # the student finished everything: the reference library files and notebooks
            for f in M.exercise_files():
                shutil.copy2(REPO / f, rt.copy / f)
            for name in names:
                nbformat.write(reference_notebook(name, release_dir),
                               str(rt.copy / "notebooks" / f"{name}.ipynb"))
        for name in names:
            path = (release_dir if phase == 1 else rt.copy) / "notebooks" / f"{name}.ipynb"
            nb, secs = rt.run(path)
            timings[f"phase{phase} {name}"] = secs
            bad = [(g, e, v[:160]) for g, e, v in errors_of(nb) if not allowed(name, g, e, v, phase)]
            stubs = len(errors_of(nb)) - len(bad)
            log(f"  colab phase {phase} {name}: {secs:5.1f}s, "
                f"{stubs} expected error(s), {len(bad)} other")
            problems += [f"phase {phase} {name} {g}: {e}: {v}" for g, e, v in bad]
            if phase == 1 and name == names[0] and not (rt.copy / "course").is_dir():
                problems.append(f"phase 1: the setup cell did not clone the course into {rt.copy}")
    return {"ok": not problems, "problems": problems, "timings": timings}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--release", type=Path, required=True, help="a release (graders.release)")
    ap.add_argument("--work", type=Path, default=REPO / "build" / "colab-emulation")
    ap.add_argument("--cuda", action="store_true", help="build the CUDA backend (needs nvcc)")
    ap.add_argument("--json", type=Path, help="also write the result (ok, problems, timings) here")
    args = ap.parse_args(argv)
    # absolute: the emulation changes directories (its /content) while it copies into ``work``
    res = emulate(args.release.resolve(), args.work.resolve(), args.cuda)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    for p in res["problems"]:
        print("PROBLEM", p)
    print(json.dumps({k: round(v, 1) for k, v in res["timings"].items()}, indent=1))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
