"""Find the course repository, install what is missing and build the native backends once.

Used by the first cell of every notebook (``course_setup``) and by ``python -m course build``.
Standard library only: on a fresh Colab runtime nothing else is importable yet.

* ``find_root()``: ``NEEDLE_ROOT`` when set, else the first folder at or above the working
  directory (a notebook runs in ``notebooks/``) holding ``course/manifest.py`` and ``needle/``.
* ``ensure_requirements(root)``: the packages of ``requirements.txt`` that do not import are
  installed with pip, output shown, into ``<root>/.packages/py3.X`` (inside the student's copy,
  so on Colab they persist on Drive and the runtime's own packages stay untouched); that folder
  goes on ``sys.path`` and ``PYTHONPATH``.
* ``ensure_built(root)``: CMake builds the C++ backend, and the CUDA backend when nvcc and a GPU
  are there (for that GPU); otherwise only the CUDA kernels' host emulation, compiled by the
  host compiler (no nvcc needed: notebook 06 tests the kernels' tile code through it), with
  the build's progress lines shown. A stamp in ``<root>/build/`` records the hash of the native
  sources and the build options, so the next notebook, or the next session, does nothing.
  ``NEEDLE_CUDA=0`` / ``1`` forces the CUDA backend off (host emulation) / on (nvcc needed;
  without a GPU it is built for one architecture).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

#: import name of each requirement whose module name differs from its package name
_IMPORT_NAMES = {"pybind11": "pybind11", "safetensors": "safetensors"}
_STAMP = "needle-build.stamp"
_NATIVE_SUFFIXES = (".cc", ".cpp", ".cxx", ".h", ".hpp", ".cu", ".cuh", ".txt")


class SetupError(RuntimeError):
    """A setup step failed; the message says which and what to do."""


def find_root(start: str | os.PathLike | None = None) -> Path:
    """The course repository (see the module docstring); raises SetupError when not found."""
    env = os.environ.get("NEEDLE_ROOT")
    if env:
        root = Path(env).expanduser().resolve()
        if not (root / "needle").is_dir():
            raise SetupError(f"NEEDLE_ROOT={env} holds no needle/ folder: point it at the course "
                             f"repository or unset it")
        return root
    here = Path(start or os.getcwd()).resolve()
    for d in (here, *here.parents):
        if (d / "course" / "manifest.py").is_file() and (d / "needle").is_dir():
            return d
    raise SetupError(f"no course repository at or above {here}: open the notebook from the "
                     f"repository's notebooks/ folder or set NEEDLE_ROOT to the repository")


def packages_dir(root: Path) -> Path:
    return Path(root) / ".packages" / f"py{sys.version_info.major}.{sys.version_info.minor}"


def _add_to_path(folder: Path) -> None:
    folder = str(folder)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if folder not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([folder, *parts])
    importlib.invalidate_caches()


def requirements(root: Path) -> list[str]:
    """The requirement lines of ``<root>/requirements.txt`` (comments and options dropped)."""
    path = Path(root) / "requirements.txt"
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.append(line)
    return out


def _import_name(req: str) -> str:
    name = re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip()
    return _IMPORT_NAMES.get(name.lower(), name.replace("-", "_").lower())


def missing_requirements(root: Path) -> list[str]:
    """Requirements of ``root`` whose module cannot be imported by this interpreter."""
    return [r for r in requirements(root) if importlib.util.find_spec(_import_name(r)) is None]


def _stream(cmd, cwd, log: Path | None = None, show=lambda line: True) -> int:
    """Run ``cmd``, printing the output lines that ``show`` accepts as they come."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    tail = []
    fh = open(log, "a") if log else None
    try:
        for line in proc.stdout:
            tail = (tail + [line])[-60:]
            if fh:
                fh.write(line)
            if show(line):
                print(line.rstrip(), flush=True)
    finally:
        if fh:
            fh.close()
    rc = proc.wait()
    if rc != 0:
        print("".join(tail), flush=True)
    return rc


def ensure_requirements(root: Path) -> None:
    """Install the missing runtime requirements (see the module docstring)."""
    target = packages_dir(root)
    if target.is_dir():
        _add_to_path(target)
    missing = missing_requirements(root)
    if not missing:
        return
    print(f"installing {', '.join(missing)} into {target} ...", flush=True)
    target.mkdir(parents=True, exist_ok=True)
    rc = _stream([sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
                  "--target", str(target), *missing], cwd=root)
    if rc != 0:
        raise SetupError(f"pip could not install {missing} (output above): check the network "
                         f"connection, then run this cell again")
    _add_to_path(target)
    still = missing_requirements(root)
    if still:
        raise SetupError(f"installed {still} but they still do not import: restart the runtime "
                         f"and run this cell again")


def _nvcc() -> str | None:
    found = shutil.which("nvcc") or os.environ.get("CUDACXX")
    if not found and Path("/usr/local/cuda/bin/nvcc").exists():
        found = "/usr/local/cuda/bin/nvcc"
    return found


def _gpu_present() -> bool:
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True,
                              timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def cuda_plan() -> tuple[bool, str | None]:
    """(build the CUDA backend?, CUDA architectures) for this machine."""
    forced = os.environ.get("NEEDLE_CUDA")
    nvcc = _nvcc()
    if forced == "0" or (forced != "1" and not nvcc):
        return False, None
    if _gpu_present():
        return True, "native"
    if forced == "1":
        return True, "75"   # asked for without a GPU: one architecture compiles and links
    return False, None      # no GPU: the host compiler's emulation is all that can run


def _source_hashes(root: Path, options: str) -> dict:
    """{"options": ..., "files": {native source: sha256}}: what a build depends on."""
    files = {}
    for base in ("src", "CMakeLists.txt"):
        p = Path(root) / base
        for f in (sorted(p.rglob("*")) if p.is_dir() else [p]):
            if f.is_file() and f.suffix in _NATIVE_SUFFIXES:
                files[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return {"options": options, "files": files}


def _touch_changed(root: Path, old: dict, new: dict) -> None:
    """Give sources whose content changed since the last build a new mtime: a copy or a sync
    (git checkout, Drive) may keep an old one, and make would then skip them."""
    now = time.time()
    for rel, digest in new["files"].items():
        if old.get("files", {}).get(rel) != digest:
            os.utime(Path(root) / rel, (now, now))


def _modules_present(root: Path, cuda: bool) -> bool:
    """The CPU module, and with ``cuda`` the CUDA one (real or host emulation) too."""
    lib = Path(root) / "needle" / "backend_ndarray"
    ok = any(lib.glob("ndarray_backend_cpu*.so"))
    return ok and (not cuda or any(lib.glob("ndarray_backend_cuda*.so")))


def ensure_built(root: Path, force: bool = False, jobs: int | None = None) -> bool:
    """Build the native backends unless the stamp says they match the sources; True when a
    build ran. Raises SetupError (with the compiler's output printed) when the build fails."""
    root = Path(root)
    if not (root / "CMakeLists.txt").exists() or os.environ.get("NEEDLE_SETUP_BUILD") == "0":
        return False
    stamp = root / "build" / _STAMP
    if not force and not stamp.exists() and _modules_present(root, False):
        return False        # built by other means (`make build` of the instructor, the grader)
    cuda, arch = cuda_plan()
    options = f"python={sys.executable} cuda={cuda} arch={arch} emulation=host"
    build = root / "build"
    digest = _source_hashes(root, options)
    try:
        previous = json.loads(stamp.read_text()) if stamp.exists() else {}
    except ValueError:
        previous = {}
    if not force and previous == digest and _modules_present(root, True):
        return False
    _touch_changed(root, previous, digest)
    if shutil.which("cmake") is None:
        raise SetupError("cmake is not installed: install CMake (and a C++ compiler), then run "
                         "this again")
    jobs = jobs or max(1, min(4, os.cpu_count() or 1))
    what = "C++ backend and CUDA " + (f"backend (arch {arch})" if cuda else "host emulation")
    print(f"building the {what} in {build} (first run: a minute or more) ...", flush=True)
    t0 = time.time()
    build.mkdir(parents=True, exist_ok=True)
    log = build / "needle-build.log"
    log.write_text("")
    configure = ["cmake", "-S", str(root), "-B", str(build), f"-DPython_EXECUTABLE={sys.executable}",
                 "-DCMAKE_BUILD_TYPE=Release", f"-DNEEDLE_CUDA={'ON' if cuda else 'OFF'}",
                 f"-DNEEDLE_EMULATION_HOST={'OFF' if cuda else 'ON'}"]
    if arch:
        configure.append(f"-DCMAKE_CUDA_ARCHITECTURES={arch}")
    cache = build / "CMakeCache.txt"
    if cache.exists() and f"CMAKE_CUDA_ARCHITECTURES:STRING={arch}" not in cache.read_text(
            errors="replace") and cuda:
        cache.unlink()                       # another runtime's GPU: configure afresh
    if previous.get("options") != options:  # the other CUDA module (same name): never keep it
        for so in (root / "needle" / "backend_ndarray").glob("ndarray_backend_cuda*.so"):
            so.unlink()
    steps = [(configure, lambda line: False),
             (["cmake", "--build", str(build), "-j", str(jobs)],
              lambda line: line.lstrip().startswith("[") or "error" in line.lower())]
    for cmd, show in steps:
        if _stream(cmd, root, log, show) != 0:
            stamp.unlink(missing_ok=True)
            raise SetupError(f"the build failed (compiler output above, full log {log}): fix "
                             f"the error in your C++/CUDA code, then run this again")
    stamp.write_text(json.dumps(digest, indent=0, sort_keys=True))
    print(f"built in {time.time() - t0:.0f}s", flush=True)
    return True


def setup(root: str | os.PathLike | None = None) -> Path:
    """Everything a notebook needs before ``import needle``; returns the repository root."""
    root = Path(root).resolve() if root else find_root()
    ensure_requirements(root)
    ensure_built(root)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    os.environ.setdefault("NEEDLE_ROOT", str(root))
    return root
