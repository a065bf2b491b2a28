"""Hostile commands against graders/sandbox.py: each must be contained (``python -m
graders.check_sandbox``; also part of graders/check_pipeline.py).

Returns rows (check, ok, detail). Needs a machine where ``sandbox.probe()`` is isolated."""
from __future__ import annotations

import ast
import sys
import tempfile
import time
from pathlib import Path

from .sandbox import Limits, probe, run_isolated

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def _run(code, tmp, **lim):
    limits = Limits(**{"wall_seconds": 20, "cpu_seconds": 20, **lim})
    return run_isolated([PY, "-c", code], rw_dir=tmp, limits=limits)


def checks():
    rows = []
    pr = probe()
    rows.append(("sandbox: namespaces available (" + (", ".join(pr["namespaces"]) or "none")
                 + ")", pr["isolated"], pr["reason"]))
    if not pr["isolated"]:
        return rows
    with tempfile.TemporaryDirectory(prefix="nq-sbcheck-") as tmp:
        Path(tmp, "keep.txt").write_text("data")
        secret = str(REPO / "graders" / "sandbox.py")
        # The interpreter is bound read-only at its own path: when it is a virtual environment
        # inside the repository (CI's .venv), the repository's folder exists as its parent and
        # must hold nothing else.
        prefix = Path(sys.prefix).resolve()
        allowed = [prefix.relative_to(REPO).parts[0]] if prefix.is_relative_to(REPO) else []
        r = _run(f"import os; r = {str(REPO)!r}; print(repr((os.path.exists({secret!r}),"
                 f" sorted(os.listdir(r)) if os.path.isdir(r) else [], os.getuid())))", tmp)
        try:
            seen, listing, uid = ast.literal_eval(r.stdout.decode().strip())
        except (ValueError, SyntaxError):
            seen, listing, uid = True, None, 0
        rows.append(("sandbox: instructor repository invisible, unprivileged uid",
                     not seen and listing == allowed and uid != 0,
                     f"{r.stdout.decode()[:200]} (allowed in the repository folder: {allowed}) "
                     + r.stderr.decode()[-200:]))
        r = _run("import socket; s = socket.create_connection(('1.1.1.1', 80), timeout=3)", tmp)
        rows.append(("sandbox: no network", r.returncode != 0 and b"unreachable" in r.stderr.lower(),
                     r.stderr.decode()[-120:]))
        t0 = time.time()
        r = _run("import subprocess; subprocess.Popen(['sleep', '300'], start_new_session=True);"
                 "print('left a process')", tmp)
        r2 = _run("import os; print(len([p for p in os.listdir('/proc') if p.isdigit()]))", tmp)
        rows.append(("sandbox: processes left behind are killed; runs do not see each other",
                     r.returncode == 0 and time.time() - t0 < 15 and int(r2.stdout or 99) <= 2,
                     f"{r2.stdout.decode().strip()} processes visible"))
        r = _run("import time\nwhile True: pass", tmp, wall_seconds=3)
        rows.append(("sandbox: wall-clock limit", r.timed_out, f"rc {r.returncode}"))
        r = _run("x = bytearray(3 << 30)", tmp, memory_bytes=1 << 30)
        rows.append(("sandbox: memory limit", r.returncode != 0 and b"MemoryError" in r.stderr,
                     r.stderr.decode()[-80:]))
        r = _run("import os\nn = 0\ntry:\n  while True:\n    if os.fork() == 0:\n"
                 "      import time; time.sleep(30); os._exit(0)\n    n += 1\nexcept OSError:\n"
                 "  print(n)", tmp, processes=50)
        rows.append(("sandbox: process limit (fork bomb)", r.returncode == 0 and
                     0 < int(r.stdout or 0) <= 50, f"forked {r.stdout.decode().strip()}"))
        r = _run("f = open('big', 'wb')\nwhile True: f.write(b'x' * (1 << 20))", tmp,
                 disk_bytes=64 << 20)
        rows.append(("sandbox: disk limit", r.returncode != 0 and not Path(tmp, "big").exists()
                     or Path(tmp, "big").stat().st_size <= 64 << 20, r.stderr.decode()[-80:]))
        r = _run("import sys\nfor _ in range(64): sys.stdout.write('y' * (1 << 20))", tmp,
                 output_bytes=1 << 20)
        rows.append(("sandbox: output capped by bytes", len(r.stdout) == 1 << 20
                     and "stdout" in r.truncated, f"kept {len(r.stdout)} bytes"))
        r = _run("import os; os.symlink('/etc/passwd', 'link'); open('new.txt', 'w').write('n');"
                 "os.remove('keep.txt')", tmp)
        rows.append(("sandbox: writable area copied back (files only, no links)",
                     Path(tmp, "new.txt").exists() and not Path(tmp, "keep.txt").exists()
                     and not Path(tmp, "link").is_symlink(), ""))
        rows.append(_readonly_workspace(tmp))
    return rows


_TRY_WRITES = """
import os, subprocess
tries = {
    "rewrite a released test": lambda: open("tests/test_x.py", "w").write("def test_x(): pass"),
    "rewrite the manifest": lambda: open("course/manifest.py", "a").write("NOTEBOOKS = []"),
    "add a file": lambda: open("new.txt", "w").write("n"),
    "delete a file": lambda: os.remove("keep.txt"),
    "rename a folder": lambda: os.rename("tests", "tests_old"),
    "chmod a file": lambda: os.chmod("course/manifest.py", 0o777),
    "remount it": lambda: subprocess.run(["mount", "-o", "remount,rw", os.getcwd()],
                                         check=True, capture_output=True),
}
done = []
for name, f in tries.items():
    try:
        f()
        done.append(name)
    except (OSError, subprocess.CalledProcessError):
        pass
open("/tmp/scratch.txt", "w").write("scratch")
print(repr(done))
"""


def _readonly_workspace(tmp):
    """A read-only run: no write of any kind reaches the workspace; /tmp is scratch."""
    for d in ("tests", "course"):
        Path(tmp, d).mkdir(exist_ok=True)
    Path(tmp, "tests", "test_x.py").write_text("def test_x(): assert False")
    Path(tmp, "course", "manifest.py").write_text("NOTEBOOKS = ['x']")
    Path(tmp, "keep.txt").write_text("data")
    before = {p: p.read_bytes() for p in Path(tmp).rglob("*") if p.is_file()}
    r = run_isolated([PY, "-c", _TRY_WRITES], rw_dir=tmp, readonly_rw=True,
                     limits=Limits(wall_seconds=20, cpu_seconds=20))
    try:
        done = ast.literal_eval(r.stdout.decode().strip())
    except (ValueError, SyntaxError):
        done = None
    after = {p: p.read_bytes() for p in Path(tmp).rglob("*") if p.is_file()}
    ok = r.returncode == 0 and done == [] and after == before \
        and r.isolation.get("workspace") == "read-only"
    return ("sandbox: read-only workspace (tests/, course/, files, folders) with /tmp as scratch",
            ok, f"done: {done}, rc {r.returncode}, {r.stderr.decode()[-200:]}")


def main():
    rows = checks()
    for name, ok, detail in rows:
        print(f"[{'PASS' if ok else 'FAIL'}] {name}" + (f": {detail}" if detail and not ok else ""))
    return 0 if all(ok for _, ok, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
