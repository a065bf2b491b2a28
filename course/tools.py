"""The student's course tools: ``python -m course build | check | validate | submit | list``.

* ``check NB``: runs the saved notebook in a fresh kernel and the released library tests of its
  exercises (course/manifest.py), then prints one line per exercise, e.g.
  ``3.1 choose_qparams: 4/4 passed``; exit status 0 only when everything passed.
* ``validate NB``: ``nbgrader validate`` on the notebook; exit status 0 only on its "Success!".
* ``submit NB``: ``submissions/<notebook>.zip`` holding ``<notebook>/<notebook>.ipynb``, the
  library files of ``manifest.submission_files`` at their repository paths and
  ``<notebook>/SHA256SUMS`` (sha256sum format) of them all.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

from . import manifest as M
from .bootstrap import SetupError, ensure_built, ensure_requirements, find_root

SUBMISSIONS = "submissions"
CHECKSUMS = "SHA256SUMS"


def _nb_path(root: Path, nb_id: str) -> Path:
    path = root / "notebooks" / f"{nb_id}.ipynb"
    if not path.is_file():
        raise SetupError(f"{path} not found: the notebook must be in notebooks/ of {root}")
    return path


def build(root: Path, force: bool = False) -> int:
    ensure_requirements(root)
    if not ensure_built(root, force=force):
        print("native backends are up to date")
    return 0


def list_exercises() -> int:
    for nb in M.NOTEBOOKS:
        print(f"{nb['id']}: {nb['title']}")
        for ex in nb["exercises"]:
            path, func = M.location(ex)
            where = f"notebook cell {path[5:]}" if path.startswith("cell:") else path
            print(f"  {ex['id']:>4} {M.display_name(ex):<28} {where}  ({ex['title']})")
        if not nb["exercises"]:
            print("       (no exercise: given code to read and a written answer)")
    return 0


# ---------------------------------------------------------------------------------- check

def run_notebook_tests(root: Path, nb_id: str, timeout: int = 900) -> dict:
    """{test cell grade id: None (passed) or 'ErrorName: message'} from running the notebook."""
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(str(_nb_path(root, nb_id)), as_version=4)
    env_before = os.environ.get("NEEDLE_ROOT")
    os.environ["NEEDLE_ROOT"] = str(root)
    try:
        NotebookClient(nb, timeout=timeout, allow_errors=True, kernel_name="python3",
                       resources={"metadata": {"path": str(root / "notebooks")}}).execute()
    finally:
        if env_before is None:
            os.environ.pop("NEEDLE_ROOT", None)
        else:
            os.environ["NEEDLE_ROOT"] = env_before
    results = {}
    for cell in nb.cells:
        nbg = cell.metadata.get("nbgrader", {})
        if cell.cell_type != "code" or not nbg.get("grade"):
            continue
        err = next((o for o in cell.get("outputs", []) if o.get("output_type") == "error"), None)
        results[nbg["grade_id"]] = None if err is None else \
            f"{err.get('ename')}: {str(err.get('evalue'))[:200]}"
    return results


_SELECT_PLUGIN = '''"""pytest plugin of course.tools: keep only the tests whose node id (relative to the
working directory) starts with one of $COURSE_TEST_PREFIXES (one per line)."""
import os
from pathlib import Path

PREFIXES = tuple(p for p in os.environ.get("COURSE_TEST_PREFIXES", "").splitlines() if p)


def _node(item):
    try:
        rel = Path(item.path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return item.nodeid
    return rel + "::" + item.nodeid.split("::", 1)[1] if "::" in item.nodeid else rel


def pytest_collection_modifyitems(config, items):
    keep = [i for i in items if _node(i).startswith(PREFIXES)]
    drop = [i for i in items if not _node(i).startswith(PREFIXES)]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


import pytest  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # A test may skip itself (no GPU, no torch), but a skip raised from the code under test
    # (pytest.skip() called in a library file) would hide a failure: it counts as one.
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and call.when == "call" and call.excinfo is not None:
        # the innermost frame outside pytest itself: the test (or a helper of tests/) that
        # called pytest.skip, or library code that raised the skip
        frames = [str(e.path) for e in call.excinfo.traceback
                  if "/_pytest/" not in str(e.path).replace(chr(92), "/")]
        tests_dir = Path(str(item.path)).resolve().parent
        origin = Path(frames[-1]).resolve() if frames else tests_dir / "x"
        if tests_dir not in origin.parents:
            rep.outcome = "failed"
            rep.longrepr = f"skipped from {origin}, outside the tests: counts as a failure"
'''


def _no_report(returncode: int, files) -> str:
    """Why pytest wrote no report: a crash (killed by a signal, e.g. a segfault in native code
    under test) or pytest itself not running."""
    if returncode < 0:
        try:
            import signal
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return (f"the library tests crashed ({name}), most likely in native code they call: "
                f"run `python -m pytest -x {' '.join(files)}` to see which test")
    return f"pytest did not run (exit status {returncode}; is it installed? make build)"


def _stop_group(proc, wait=True):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if wait:
        proc.wait()


def run_library_tests(root: Path, prefixes, timeout: float | None = None) -> dict:
    """{pytest node id: None (passed) or 'message'} for the tests matching ``prefixes``;
    after ``timeout`` seconds pytest is stopped and every test counts as failed."""
    prefixes = sorted(set(prefixes))
    if not prefixes:
        return {}
    files = sorted({p.split("::")[0] for p in prefixes})
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        # Only the listed tests run (a plugin deselects the others of their files), and
        # without the notebook plugins pytest would load (nbval costs seconds to import).
        # No plugin is autoloaded from its entry point: pytest would then mark every module of
        # an autoloaded plugin's distribution (all of hypothesis) for assertion rewriting, and
        # without bytecode caching (grading, a read-only tree) it re-parses and recompiles them
        # on every run (~1 CPU-s a run). hypothesis's plugin is loaded by name instead
        # (PYTEST_PLUGINS, e.g. the grader's guard, still loads first as before).
        Path(tmp, "_course_select.py").write_text(_SELECT_PLUGIN)
        env = dict(os.environ, COURSE_TEST_PREFIXES="\n".join(prefixes),
                   PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
                   PYTHONPATH=os.pathsep.join([tmp] + [p for p in [os.environ.get(
                       "PYTHONPATH")] if p]))
        hyp = ["-p", "_hypothesis_pytestplugin"] \
            if importlib.util.find_spec("_hypothesis_pytestplugin") else []
        # its own process group: whatever the tests leave running (a process rewriting the
        # report after pytest ended, say) is stopped before the report is read
        proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                 *hyp, "-p", "_course_select",
                                 f"--junitxml={xml}", "-o", "junit_family=xunit2", *files],
                                cwd=root, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        # a blocking wait (with a timer for the timeout) returns the moment pytest ends, and
        # the report is read before anything else can run
        late = []

        def stop_late():
            late.append(True)
            _stop_group(proc, wait=False)
        timer = threading.Timer(timeout, stop_late) if timeout else None
        if timer:
            timer.start()
        proc.wait()
        report = xml.read_bytes() if xml.is_file() else None
        _stop_group(proc)
        if timer:
            timer.cancel()
        if late:
            return {p: f"the library tests took longer than {timeout:g} s" for p in prefixes}
        if report is None:
            return {p: _no_report(proc.returncode, files) for p in prefixes}
        tree = ET.ElementTree(ET.fromstring(report))
    out = {}
    for case in tree.iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        node = f"{module}.py::{case.get('name')}"
        if not any(node.startswith(p) for p in prefixes):
            continue
        bad = next((c for c in case if c.tag in ("failure", "error")), None)
        skipped = next((c for c in case if c.tag == "skipped"), None)
        if skipped is not None:
            continue
        out[node] = None if bad is None else (bad.get("message") or bad.tag)[:200]
    return out


def check(root: Path, nb_id: str, run_pytest: bool = True) -> int:
    nb = M.notebook(nb_id)
    nb_id = nb["id"]
    print(f"checking {nb_id}: running the notebook ...", flush=True)
    t0 = time.time()
    cells = run_notebook_tests(root, nb_id)
    lib = {}
    prefixes = [p for ex in nb["exercises"] for p in ex["pytest"]]
    if run_pytest and prefixes:
        print("  ... and the library tests of its exercises", flush=True)
        lib = run_library_tests(root, prefixes)
    all_ok = True
    for ex in nb["exercises"]:
        results = {f"cell {t}": cells.get(t, "test cell not found in the notebook")
                   for t in ex["tests"]}
        results.update({n: r for n, r in lib.items() if any(n.startswith(p) for p in ex["pytest"])})
        passed = sum(r is None for r in results.values())
        ok = passed == len(results) and results
        all_ok &= bool(ok)
        print(f"{M.label(ex)}: {passed}/{len(results)} passed")
        failures = [(k, r) for k, r in results.items() if r is not None]
        for k, r in failures[:3]:
            print(f"    FAILED {k}: {r}")
        if len(failures) > 3:
            print(f"    ... and {len(failures) - 3} more")
    print(f"{'all passed' if all_ok else 'some tests failed'} ({time.time() - t0:.0f}s)")
    return 0 if all_ok else 1


# ---------------------------------------------------------------------------------- validate

#: seconds a cell may run under `validate` (the grader allows 900)
VALIDATE_CELL_TIMEOUT = 900


def validate(root: Path, nb_id: str) -> int:
    nb_id = M.notebook(nb_id)["id"]
    path = _nb_path(root, nb_id)
    env = {**os.environ, "NEEDLE_ROOT": str(root)}
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    # The library-tests cell runs pytest: give each cell the grader's own limit, not
    # nbgrader's 30-second default.
    res = subprocess.run([sys.executable, "-m", "nbgrader", "validate", str(path),
                          f"--Execute.timeout={VALIDATE_CELL_TIMEOUT}"],
                         cwd=path.parent, env=env, capture_output=True, text=True)
    out = res.stdout + res.stderr
    print(out.rstrip())
    # nbgrader validate exits 0 whatever its verdict: the verdict is in its output.
    ok = res.returncode == 0 and "Success!" in out and "VALIDATION FAILED" not in out
    print(f"validate {nb_id}: {'passed' if ok else 'FAILED'}")
    return 0 if ok else 1


# ---------------------------------------------------------------------------------- submit

def submission_members(root: Path, nb_id: str) -> list[tuple[str, Path]]:
    """(path inside the archive, file) of a submission; raises SetupError naming a missing file."""
    nb_id = M.notebook(nb_id)["id"]
    members = [(f"{nb_id}/{nb_id}.ipynb", _nb_path(root, nb_id))]
    for rel in M.submission_files(nb_id):
        p = root / rel
        if not p.is_file():
            raise SetupError(f"{rel} is missing from {root}: restore it (git checkout -- {rel}) "
                             f"before submitting")
        members.append((f"{nb_id}/{rel}", p))
    return members


def _unwritten(root: Path, nb_id: str) -> list[str]:
    """Exercises of ``nb_id`` whose stub message is still in the file or notebook."""
    texts = {}
    out = []
    for _, ex in M.exercises(nb_id):
        f = M.library_file(ex) or f"notebooks/{nb_id}.ipynb"
        if f not in texts:
            p = root / f
            texts[f] = p.read_text(encoding="utf-8", errors="replace") if p.is_file() else ""
        if any(msg in texts[f] for msg in M.stub_messages(nb_id, ex)):
            out.append(M.label(ex))
    return out


def submit(root: Path, nb_id: str, out_dir: Path | None = None) -> Path:
    nb_id = M.notebook(nb_id)["id"]
    members = submission_members(root, nb_id)
    json.loads(members[0][1].read_text(encoding="utf-8"))   # a notebook that is valid JSON
    out_dir = Path(out_dir or root / SUBMISSIONS)
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / f"{nb_id}.zip"
    tmp = archive.with_suffix(".zip.tmp")
    sums = []
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for name, path in members:
            data = path.read_bytes()
            sums.append(f"{hashlib.sha256(data).hexdigest()}  {name.split('/', 1)[1]}")
            z.writestr(name, data)
        z.writestr(f"{nb_id}/{CHECKSUMS}", "\n".join(sums) + "\n")
    os.replace(tmp, archive)
    print(f"wrote {archive}:")
    for line in sums:
        print(f"  {line.split('  ', 1)[1]}")
    todo = _unwritten(root, nb_id)
    if todo:
        print(f"note: still raising their stub (not written yet): {', '.join(todo)}")
    return archive


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m course", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="install missing packages, build the native backends")
    b.add_argument("--force", action="store_true", help="rebuild even when up to date")
    sub.add_parser("list", help="every exercise, its file and function")
    for name, what in (("check", "run the notebook's tests and its exercises' library tests"),
                       ("validate", "nbgrader validate, with a truthful exit status"),
                       ("submit", "write submissions/<notebook>.zip")):
        p = sub.add_parser(name, help=what)
        p.add_argument("notebook", nargs="?", default="",
                       help="notebook id or number, e.g. 03 or 03_quant_basics")
        if name == "check":
            p.add_argument("--no-pytest", action="store_true", help="only the notebook's tests")
        if name == "submit":
            p.add_argument("--out", type=Path, help="folder for the archive (default submissions/)")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "list":
            return list_exercises()
        root = find_root(Path(__file__).resolve().parents[1]) \
            if not os.environ.get("NEEDLE_ROOT") else find_root()
        if args.cmd == "build":
            return build(root, args.force)
        if not args.notebook:
            raise SetupError(f"say which notebook, e.g. `make {args.cmd} NB=03` "
                             f"(known: {', '.join(n['id'] for n in M.NOTEBOOKS)})")
        try:
            M.notebook(args.notebook)
        except KeyError as e:
            raise SetupError(str(e.args[0])) from None
        if args.cmd == "check":
            ensure_requirements(root)
            ensure_built(root)
            return check(root, args.notebook, run_pytest=not args.no_pytest)
        if args.cmd == "validate":
            return validate(root, args.notebook)
        submit(root, args.notebook, args.out)
        return 0
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
