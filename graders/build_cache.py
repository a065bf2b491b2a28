"""Content-addressed cache of the compiled native backends of grading workspaces.

A grading workspace is the release plus one student's files. Its compiled modules
(``needle/backend_ndarray/*.so``) depend only on the native sources (``CMakeLists.txt`` and
every file under ``src/``), the toolchain (compilers, CMake, Python, pybind11) and the build
mode (CPU only, CUDA for every architecture, the host compiler's CUDA emulation). The cache key is a
SHA-256 over exactly those, so:

* a submission that changed no native file gets the release's modules (one build per release);
* a student's C++/CUDA file is compiled once, however often that submission is regraded;
* two workers that need the same key wait for one build instead of compiling twice.

Layout: ``<cache>/<key>/`` holds the ``.so`` files and ``build.log``; entries appear atomically
(built under a temporary name, then renamed). Only successful builds are stored: a failing
student build is retried on its next grading (it may have failed for a machine reason).
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

#: files of a workspace that go into the native build (relative to the workspace root)
NATIVE_TOP_FILES = ("CMakeLists.txt",)
NATIVE_DIRS = ("src",)
MODULE_DIR = Path("needle") / "backend_ndarray"


def native_sources(ws: Path) -> list[str]:
    """Sorted workspace-relative paths of every file that goes into the native build."""
    ws = Path(ws)
    out = [f for f in NATIVE_TOP_FILES if (ws / f).is_file()]
    for d in NATIVE_DIRS:
        for dirpath, dirnames, filenames in os.walk(ws / d):
            dirnames.sort()
            for name in filenames:
                path = Path(dirpath) / name
                if path.is_file() and not path.is_symlink():
                    out.append(path.relative_to(ws).as_posix())
    return sorted(out)


def _version(cmd: list[str]) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return "absent"
    return (res.stdout or res.stderr).strip()


@functools.lru_cache(maxsize=None)
def toolchain_fingerprint(cuda: bool) -> str:
    """What, besides the sources, decides the compiled code: compilers, CMake, Python, pybind11."""
    parts = [f"python {sys.version} {sys.executable}", f"platform {sys.platform} {os.uname().machine}",
             "cxx " + _version([os.environ.get("CXX", "c++"), "--version"]),
             "cmake " + _version(["cmake", "--version"])]
    try:
        import pybind11
        parts.append(f"pybind11 {pybind11.__version__}")
    except ImportError:
        parts.append("pybind11 absent")
    if cuda:
        parts.append("nvcc " + _version([os.environ.get("CUDACXX", "nvcc"), "--version"]))
    return "\n".join(parts)


def build_key(ws: Path, mode: str) -> str:
    """SHA-256 (hex) of the workspace's native sources, the build mode and the toolchain.

    mode: "cpu", "cuda" (every architecture) or "emulate-host" (the CUDA host emulation,
    compiled by the host compiler: no nvcc involved)."""
    ws = Path(ws)
    h = hashlib.sha256()
    h.update(f"mode {mode}\n".encode())
    h.update(toolchain_fingerprint(mode == "cuda").encode())
    for rel in native_sources(ws):
        h.update(f"\0file {rel}\0".encode())
        h.update((ws / rel).read_bytes())
    return h.hexdigest()


class BuildCache:
    """``BuildCache(dir).build(ws, log, jobs, cuda, emulate)`` replaces ``build_native``.

    It has the same contract (True on success, modules of the workspace match its sources,
    none left after a failure) and only compiles when no entry matches the sources."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def entry(self, key: str) -> Path:
        return self.root / key

    def _install(self, entry: Path, ws: Path) -> None:
        mod_dir = Path(ws) / MODULE_DIR
        mod_dir.mkdir(parents=True, exist_ok=True)
        for so in mod_dir.glob("*.so"):
            so.unlink()
        for so in sorted(entry.glob("*.so")):
            tmp = mod_dir / (so.name + ".tmp")
            shutil.copy2(so, tmp)
            os.replace(tmp, mod_dir / so.name)

    def _store(self, key: str, ws: Path, log: Path, seconds: float) -> None:
        entry = self.entry(key)
        tmp = self.root / f"{key}.tmp{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        for so in sorted((Path(ws) / MODULE_DIR).glob("*.so")):
            shutil.copy2(so, tmp / so.name)
        if log.exists():
            shutil.copy2(log, tmp / "build.log")
        (tmp / "meta.json").write_text(json.dumps(
            {"seconds": round(seconds, 1), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
             "sources": native_sources(ws)}, indent=1) + "\n")
        if entry.exists():
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, entry)

    def build(self, ws: Path, log: Path, jobs: int, cuda: bool, emulate: bool = False,
              allow_unisolated: bool = False) -> bool:
        from .autograde import build_native
        ws, log = Path(ws), Path(log)
        if not (ws / "CMakeLists.txt").exists():
            return True
        mode = "cuda" if cuda else ("emulate-host" if emulate else "cpu")
        key = build_key(ws, mode)
        self.root.mkdir(parents=True, exist_ok=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        # One build per key: a second worker needing the same modules waits, then installs them.
        with open(self.root / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entry = self.entry(key)
            if entry.is_dir():
                self.hits += 1
                self._install(entry, ws)
                log.write_text(f"native build: cache hit {key[:16]} ({mode}), "
                               f"modules from {entry}\n")
                return True
            self.misses += 1
            t0 = time.time()
            ok = build_native(ws, log, jobs, cuda, emulate, allow_unisolated)
            if ok:
                self._store(key, ws, log, time.time() - t0)
                with open(log, "a") as fh:
                    fh.write(f"native build: cached as {key[:16]} ({mode}) "
                             f"in {time.time() - t0:.0f}s\n")
            return ok
