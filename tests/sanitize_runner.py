"""Run pytest against the AddressSanitizer + UndefinedBehaviorSanitizer build (``make sanitize``).

    python tests/sanitize_runner.py BUILD_DIR [pytest arguments...]

BUILD_DIR/lib holds the instrumented modules (CMake -DNEEDLE_SANITIZE=ON). pytest runs with
them (``NEEDLE_BACKEND_DIR``) and with the ASan runtime preloaded (CPython itself is not
instrumented, so the runtime must come first in the library list), in a session of its own:
no test that signals its process group or session reaches the caller (make). Every process
of the run, the fuzz suite's subprocess workers included, writes its sanitizer reports to
BUILD_DIR/reports/, so a report is found even where a test expected its subprocess to fail.

Prints a summary (tests passed / failed / skipped, time, each report's first line) and exits
non-zero when a test failed, pytest died, or any sanitizer report was written.
"""
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# detect_leaks=0: CPython keeps its objects alive at exit, LeakSanitizer would flag them all.
# abort_on_error: a report ends the process with SIGABRT, which every harness sees as a crash.
# allocator_may_return_null: an oversized allocation fails as MemoryError, as without ASan.
ASAN_OPTIONS = ("detect_leaks=0:abort_on_error=1:allocator_may_return_null=1:"
                "log_path={reports}/asan")
UBSAN_OPTIONS = "print_stacktrace=1:halt_on_error=1:abort_on_error=1:log_path={reports}/ubsan"


def compiler_runtime(name):
    """Path of the compiler's (CXX, else c++) library ``name``, or exit with a message."""
    cxx = os.environ.get("CXX") or "c++"
    try:
        path = subprocess.run([cxx, f"-print-file-name={name}"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"sanitize: cannot ask {cxx} for {name}: {e}")
    if not os.path.isabs(path) or not os.path.exists(path):
        sys.exit(f"sanitize: {cxx} has no {name} (got {path!r}); install the compiler's "
                 "AddressSanitizer runtime (e.g. libasan of your GCC)")
    return os.path.realpath(path)


def preload():
    """LD_PRELOAD for an uninstrumented python: the ASan runtime first, then libstdc++, so
    ASan's C++ exception interceptor finds the real __cxa_throw at start-up (otherwise every
    exception a module throws ends the process with "CHECK failed ... real___cxa_throw")."""
    return " ".join(compiler_runtime(n) for n in ("libasan.so", "libstdc++.so"))


def read_reports(reports):
    """{the line saying what was found: [report file names]} over the report files."""
    found = {}
    for f in sorted(reports.iterdir()):
        lines = f.read_text(errors="replace").splitlines()
        said = [l for l in lines if "ERROR:" in l or "runtime error:" in l] or lines or ["(empty)"]
        # the same finding in many processes: group it (pids and addresses differ)
        key = re.sub(r"0x[0-9a-f]+|tid=\d+|==\d+==", "_", said[0].strip())
        found.setdefault(key, []).append(f.name)
    return found


def junit_counts(path):
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    get = lambda k: int(suite.get(k, 0))  # noqa: E731
    failed, errors, skipped = get("failures"), get("errors"), get("skipped")
    return {"passed": get("tests") - failed - errors - skipped, "failed": failed,
            "errors": errors, "skipped": skipped}


def main(argv):
    if len(argv) < 1:
        sys.exit(__doc__)
    build = Path(argv[0]).resolve()
    lib = build / "lib"
    if not any(lib.glob("ndarray_backend_cpu*.so")):
        sys.exit(f"sanitize: no instrumented ndarray_backend_cpu module in {lib}")
    reports = build / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    for f in reports.iterdir():
        f.unlink()
    junit = build / "junit.xml"
    junit.unlink(missing_ok=True)
    env = dict(os.environ, NEEDLE_BACKEND_DIR=str(lib), LD_PRELOAD=preload(),
               ASAN_OPTIONS=ASAN_OPTIONS.format(reports=reports),
               UBSAN_OPTIONS=UBSAN_OPTIONS.format(reports=reports),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE",
           f"--junitxml={junit}", *argv[1:]]
    print("sanitize: modules from", lib, flush=True)
    print("sanitize:", " ".join(cmd[2:]), flush=True)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=str(REPO), start_new_session=True)
    try:
        rc = proc.wait()
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait()
    seconds = time.monotonic() - start
    # the session may have left processes behind (a test's daemon): end them, not the caller
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass

    counts = junit_counts(junit)
    found = read_reports(reports)
    print("\n==== sanitizer run (ASan + UBSan) ====")
    if counts is None:
        print(f"tests: no result file (pytest exit status {rc})")
    else:
        print("tests: " + ", ".join(f"{v} {k}" for k, v in counts.items())
              + f" in {seconds:.0f} s (pytest exit status {rc})")
    if rc < 0:
        print(f"pytest itself died on signal {-rc} ({signal.Signals(-rc).name}): a sanitizer "
              "report in the test process ends the run there")
    total = sum(len(v) for v in found.values())
    print(f"sanitizer reports: {total}" + (f" (in {reports})" if found else ""))
    for line, names in sorted(found.items(), key=lambda kv: -len(kv[1])):
        print(f"  {len(names)} x {line}   e.g. {names[0]}")
    ok = rc == 0 and not found and counts is not None
    print("result:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
