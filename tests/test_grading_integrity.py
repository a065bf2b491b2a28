"""The grader's own pieces that need no nbgrader run: the notebook repair, the scoring policy,
the sandbox (instructor-only: not released)."""
import ast
import copy
import json
import sys

import nbformat
import pytest

from graders import sandbox
from graders.preprocessors import apply_policy, cell_role, defined_names, restore_cells


def _cell(kind, gid, source="x = 1", **nbg):
    c = nbformat.v4.new_code_cell(source) if kind != "md" else nbformat.v4.new_markdown_cell(source)
    if gid:
        c.metadata["nbgrader"] = {"grade_id": gid, "schema_version": 3, **nbg}
    return c


def _release():
    return nbformat.v4.new_notebook(cells=[
        _cell("md", None, "# title"),
        _cell("code", "setup", "import numpy as np", locked=True, grade=False, solution=False),
        _cell("code", "test_a", "assert f() == 1", locked=True, grade=True, solution=False,
              points=2),
        _cell("code", "impl_f", "def f():\n    raise NotImplementedError()", locked=False,
              grade=False, solution=True),
        _cell("code", "test_b", "assert f() + 1 == 2", locked=True, grade=True, solution=False,
              points=1),
    ])


def _ids(nb):
    return [c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells]


def test_restore_cells_puts_back_deleted_moved_and_relabelled_cells():
    rel = _release()
    sub = copy.deepcopy(rel)
    sub.cells[3].source = "def f():\n    return 1"
    del sub.cells[2]                                    # test_a, right after a read-only cell
    sub.cells.append(sub.cells.pop(3))                  # test_b moved to the end
    sub.cells[1].metadata["nbgrader"]["grade_id"] = ["setup"]      # tampered type
    forged = _cell("code", "bonus", "pass", grade=True, points=50, locked=False, solution=False)
    sub.cells.insert(2, forged)
    nb, repairs = restore_cells(sub, rel)
    graded = [g for g in _ids(nb) if g]
    assert graded == ["setup", "test_a", "impl_f", "test_b"]
    assert [c.source for c in nb.cells if _ids(nb)[nb.cells.index(c)] == "impl_f"] == \
        ["def f():\n    return 1"]
    assert "bonus" not in _ids(nb) and any("bonus" in r for r in repairs)
    assert any("test_a was missing" in r for r in repairs)
    points = [c.metadata["nbgrader"].get("points") for c in nb.cells
              if c.metadata.get("nbgrader", {}).get("grade")]
    assert points == [2, 1]


def test_restore_cells_restores_edited_metadata_and_cell_type():
    rel = _release()
    sub = copy.deepcopy(rel)
    sub.cells[4].metadata["nbgrader"]["points"] = 100
    sub.cells[3].cell_type = "markdown"
    sub.cells[3].pop("outputs", None)
    sub.cells[3].pop("execution_count", None)
    nb, repairs = restore_cells(sub, rel)
    assert nb.cells[-1].metadata["nbgrader"]["points"] == 1
    assert nb.cells[3].cell_type == "code"
    assert len(repairs) == 2


def test_policy_stderr_and_execute_result_are_not_scores():
    cell = _cell("code", "test_a", grade=True, points=2, locked=True, solution=False)
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text="debug\n"),
                    nbformat.v4.new_output("execute_result", data={"text/plain": "0.5"},
                                           execution_count=1)]
    apply_policy(cell)
    kinds = [(o.output_type, o.get("name")) for o in cell.outputs]
    assert kinds == [("stream", "stdout"), ("display_data", None)]
    assert cell.outputs[0].text == "[stderr] debug\n"


def test_policy_caps_output_bytes_but_keeps_errors():
    cell = _cell("code", "test_a", grade=True, points=2, locked=True, solution=False)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="x" * 5000)
                    for _ in range(10)]
    cell.outputs.append(nbformat.v4.new_output("error", ename="AssertionError", evalue="no",
                                               traceback=["AssertionError: no"]))
    apply_policy(cell, cap=12000)
    assert len(json.dumps(cell.outputs)) < 20000
    assert cell.outputs[-1].output_type == "error"
    assert any("truncated" in o.get("text", "") for o in cell.outputs)


def test_roles_and_defined_names():
    rel = _release()
    assert [cell_role(c) for c in rel.cells] == ["markdown", "readonly", "test", "solution",
                                                 "test"]
    assert defined_names("import numpy as np\n%matplotlib inline\ndef h(): pass\nx, y = 1, 2") \
        == ["h", "np", "x", "y"]


needs_sandbox = pytest.mark.skipif(not sandbox.probe()["isolated"],
                                   reason="no namespaces here (needs root and unshare)")


@needs_sandbox
def test_sandbox_hides_the_host_and_keeps_the_result_channel(tmp_path):
    (tmp_path / "in.txt").write_text("hello")
    code = ("import os; open('out.txt', 'w').write(open('in.txt').read().upper());"
            "os.write(3, str(os.getuid()).encode()); print(os.path.exists(%r))"
            % str(sandbox.__file__))
    r = sandbox.run_isolated([sys.executable, "-c", code], rw_dir=tmp_path,
                             limits=sandbox.Limits(wall_seconds=60))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == b"False"
    assert int(r.result) >= sandbox.UID_BASE
    assert (tmp_path / "out.txt").read_text() == "HELLO"
    assert r.isolation["method"] == "unshare" and "net" in r.isolation["namespaces"]


def test_unisolated_runs_only_when_allowed(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox, "_PROBE", {"isolated": False, "method": "none",
                                            "namespaces": [], "reason": "test"})
    with pytest.raises(sandbox.SandboxUnavailable, match="--allow-unisolated"):
        sandbox.run_isolated(["true"], rw_dir=tmp_path)
    r = sandbox.run_isolated([sys.executable, "-c", "import os; print(os.getcwd())"],
                             rw_dir=tmp_path, workdir=sandbox.SANDBOX_RW,
                             allow_unisolated=True)
    assert r.stdout.decode().strip() == str(tmp_path) and r.isolation["method"] == "none"


@needs_sandbox
def test_sandbox_workspace_can_be_read_only(tmp_path):
    from graders.check_sandbox import _readonly_workspace
    name, ok, detail = _readonly_workspace(tmp_path)
    assert ok, detail


# A library module that rewrites pytest's junit report as "all passed" after pytest is done:
# in an atexit handler and from a process it leaves behind (which waits for pytest to end).
_FORGER = '''
import atexit, os, subprocess, sys
_xml = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--junitxml=")), None)
_FAKE = ('<?xml version="1.0"?><testsuites><testsuite name="pytest">'
         '<testcase classname="tests.test_forged" name="test_wrong"/></testsuite></testsuites>')
def _forge():
    if _xml:
        open(_xml, "w").write(_FAKE)
if _xml:
    atexit.register(_forge)
    subprocess.Popen([sys.executable, "-c", "import os, time\\nwhile os.getppid() == %d:\\n"
                      "    time.sleep(0.01)\\nopen(%r, 'w').write(%r)" % (os.getpid(), _xml, _FAKE)])
'''


def _execute(tmp_path, cells, library_tests=None, **job_extra):
    """Run cells [(role, source)] through graders/notebook_executor.py in the sandbox, as
    SandboxedExecute does (read-only workspace: tmp_path/ws); returns (outputs, events)."""
    from graders.preprocessors import GRADER_DIR, HERE, defined_names
    ws = tmp_path / "ws"
    (ws / "notebooks").mkdir(parents=True)
    (ws / "tests").mkdir()
    (ws / "tests" / "test_tiny.py").write_text(
        "def test_passes():\n    assert 1 + 1 == 2\n\n\ndef test_fails():\n    assert 1 + 1 == 3\n")
    (ws / "fakelib.py").write_text("import numpy as np\nnp.allclose = lambda *a, **k: True\n")
    (ws / "forger.py").write_text(_FORGER)
    (ws / "tests" / "test_forged.py").write_text(
        "import forger\n\n\ndef test_wrong():\n    assert 1 + 1 == 3\n")
    (ws / "tests" / "test_faked.py").write_text(
        "import numpy as np\nimport fakelib\n\n\ndef test_wrong():\n"
        "    assert np.allclose(1.0, 2.0)\n")
    import shutil
    shutil.copytree(HERE.parent / "course", ws / "course",
                    ignore=shutil.ignore_patterns("__pycache__"))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for _, s in cells])
    roles = [r for r, _ in cells]
    job = {"notebook": nb, "roles": roles, "timeout": 120, "cell_output_bytes": 1 << 18,
           "readonly_names": {str(i): defined_names(s) for i, (r, s) in enumerate(cells)
                              if r == "readonly"},
           "test_names": {}, "library_tests": library_tests or {},
           "root": sandbox.SANDBOX_RW, "isolated": True,
           "guard_path": f"{GRADER_DIR}/kernel_guard.py", "cwd": f"{sandbox.SANDBOX_RW}/notebooks",
           "pytest_guard_path": f"{GRADER_DIR}/pytest_guard.py", **job_extra}
    binds = [(HERE / name, f"{GRADER_DIR}/{name}")
             for name in ("notebook_executor.py", "kernel_guard.py", "pytest_guard.py")]
    r = sandbox.run_isolated([sys.executable, f"{GRADER_DIR}/notebook_executor.py"], rw_dir=ws,
                             ro_binds=binds, workdir=f"{sandbox.SANDBOX_RW}/notebooks",
                             limits=sandbox.Limits(wall_seconds=300), copy_back=False,
                             readonly_rw=True, stdin=json.dumps(job).encode())
    assert r.result, r.stderr.decode()[-2000:]
    res = json.loads(r.result)
    return [c.get("outputs", []) for c in res["notebook"]["cells"]], res["events"]


def _errors(outs):
    return [f"{o['ename']}: {o['evalue']}" for o in outs if o["output_type"] == "error"]


_NEUTER = '''
import sys, numpy as np
sys.path.insert(0, "/sandbox/work")
import course.tools
from IPython import get_ipython
for c in object.__subclasses__():                   # the guard's class, whatever its name
    if hasattr(c, "call"):
        c.call = staticmethod(lambda method, nonce, *a: "ok|" + "0" * 64)
get_ipython().display_formatter.format = lambda obj, **kw: ({"text/plain": "'ok'"}, {})
np.allclose = lambda *a, **k: True
course.tools.run_library_tests = lambda root, prefixes, **kw: {p: None for p in prefixes}
'''


@needs_sandbox
def test_executor_rejects_a_neutered_guard_and_runs_library_tests_itself(tmp_path):
    outs, _ = _execute(tmp_path, [
        ("readonly", "import numpy as np\ndef helper():\n    return 1"),
        ("test", "assert helper() == 1 and not np.allclose(0.0, 1.0)"),
        ("solution", _NEUTER),
        ("test", "assert not np.allclose(0.0, 1.0)"),
        ("test", "from course.tools import run_library_tests\nassert False, 'never run here'"),
    ], library_tests={"4": ["tests/test_tiny.py", "tests/test_faked.py"]})
    assert _errors(outs[1]) == [] and _errors(outs[2]) == [], outs[:3]
    assert any("GradingIntegrityError" in e and "removed or broken" in e
               for e in _errors(outs[3])), outs[3]
    # the library-tests cell: the executor's own run of the workspace's tests, not the kernel's
    # (and a library that fakes numpy's comparisons on import fails its test)
    assert "1/3 passed" in "".join(o.get("text", "") for o in outs[4])
    failed = ast.literal_eval(_errors(outs[4])[0].split(": ", 1)[1])
    assert failed["tests/test_tiny.py::test_fails"] == "assert (1 + 1) == 3"
    assert "GradingIntegrityError" in failed["tests/test_faked.py::test_wrong"], failed
    assert len(failed) == 2 and len(_errors(outs[4])) == 1


# Student code that goes for the guard itself or for the running test (each a solution cell
# redefining ``student_fn``, then a test of it): every one must leave the test failed.
_REACH_IN = {
    "garbage_collector": "import gc\nfor o in gc.get_objects():\n    pass\n"
                         "def student_fn(x):\n    return 2",
    "tracing": "import sys\nsys.settrace(lambda *a: None)\ndef student_fn(x):\n    return 2",
    "patch_then_undo_after_the_cell": (
        "def student_fn(x):\n    import numpy.testing as nt\n    orig = nt.assert_allclose\n"
        "    nt.assert_allclose = lambda *a, **k: None\n    ip = get_ipython()\n"
        "    def undo(*a):\n        nt.assert_allclose = orig\n"
        "        ip.events.unregister('post_run_cell', undo)\n"
        "    ip.events.register('post_run_cell', undo)\n    return 0"),
    "seal_early_then_quit": (
        "def student_fn(x):\n    import linecache, re, sys\n"
        "    for v in list(linecache.cache.values()):\n"
        "        src = ''.join(v[2] or []) if isinstance(v, tuple) and len(v) > 2 else ''\n"
        "        for ev in re.findall(r\"audit\\('([^']+)', 'seal'\\)\", src):\n"
        "            sys.audit(ev, 'seal')\n"
        "            raise SystemExit\n"
        "    return 0"),
    "read_the_test_frame": (
        "def student_fn(x):\n    import sys\n    try:\n"
        "        return sys._getframe(1).f_locals.get('want')\n    except Exception:\n"
        "        return get_ipython().user_ns.get('want')"),
    "read_the_frame_through_a_traceback": (
        "def student_fn(x):\n    try:\n        raise ValueError\n    except ValueError as e:\n"
        "        return e.__traceback__.tb_frame.f_back.f_locals.get('want')"),
    # a generator's frame taken before the test: resumed inside it, it leads to the test
    "generator_frame": (
        "def _g():\n    while True:\n        yield _fr.f_back.f_back.f_locals.get('want')\n"
        "_gen = _g()\ntry:\n    _fr = _gen.gi_frame\nexcept PermissionError:\n    _fr = None\n"
        "def student_fn(x):\n    try:\n        return next(_gen)\n    except Exception:\n"
        "        return 0"),
    "generator_frame_from_inside": (
        "import sys\ndef _g():\n    try:\n        fr = sys._getframe()\n"
        "    except PermissionError:\n        fr = None\n    yield\n    while True:\n"
        "        yield fr.f_back.f_back.f_locals.get('want')\n_gen = _g()\nnext(_gen)\n"
        "def student_fn(x):\n    try:\n        return next(_gen)\n    except Exception:\n"
        "        return 0"),
    # an installed function's code swapped by a finalizer (the interpreter calls setattr)
    "code_swap_by_a_finalizer": (
        "import weakref, numpy.testing as _nt\nclass _Box:\n    pass\n_keep = [_Box()]\n"
        "def _noop(*a, **k):\n    return None\n"
        "weakref.finalize(_keep[0], setattr, _nt.assert_allclose, '__code__', _noop.__code__)\n"
        "def student_fn(x):\n    _keep.clear()\n    return 0"),
    "raw_memory_through_a_library_wrapper": (
        "import ctypes\ndef student_fn(x):\n    try:\n        ctypes.string_at(id(x), 8)\n"
        "    except PermissionError:\n        return 0\n    return 2"),
    "builtins_of_the_namespace": (
        "import builtins, types\n_real = builtins.__import__\n"
        "_fake = types.ModuleType('numpy.testing')\n_fake.assert_allclose = lambda *a, **k: None\n"
        "def _imp(name, *a, **k):\n    return _fake if name == 'numpy.testing' else _real(name, *a, **k)\n"
        "get_ipython().user_ns['__builtins__'] = dict(vars(builtins), __import__=_imp)\n"
        "def student_fn(x):\n    return 0"),
    "forge_a_verdict_request": (
        "import sys\nbox = []\nsys.audit('nq.grading.x', 'call', 'verdict', 'n', (), box, 'x')\n"
        "assert box == []\ndef student_fn(x):\n    return 0"),
}


@needs_sandbox
def test_student_code_cannot_reach_into_the_guard_or_the_running_test(tmp_path):
    cells = [("readonly", "import numpy as np")]
    for src in _REACH_IN.values():
        cells += [("solution", src),
                  ("test", "import numpy.testing as nt\nwant = 2.0\n"
                           "nt.assert_allclose(student_fn(1.0), want)")]
    cells += [("solution", "def student_fn(x):\n    return 2 * x"),
              ("test", "want = 2.0\nassert student_fn(1.0) == want")]
    outs, _ = _execute(tmp_path, cells)
    for k, name in enumerate(_REACH_IN):
        assert _errors(outs[2 + 2 * k]), (name, outs[1 + 2 * k], outs[2 + 2 * k])
    assert "PermissionError" in str(outs[1]) and "PermissionError" in str(outs[3]), outs[1:4]
    # an honest solution after all of that still passes
    assert _errors(outs[-1]) == [], outs[-1]


_THREAD = (
    "import threading, time, numpy.testing as nt\n_orig = nt.assert_allclose\n"
    "def _toggle():\n    while True:\n        nt.assert_allclose = lambda *a, **k: None\n"
    "        time.sleep(0.002)\n        nt.assert_allclose = _orig\n        time.sleep(0.0005)\n"
    "threading.Thread(target=_toggle, daemon=True).start()\n"
    "def student_fn(x):\n    time.sleep(0.01)\n    return 0")


def _test_errors(tmp_path, solution):
    """The errors of a test cell checking ``student_fn(1.0) == 2.0`` with numpy.testing,
    after ``solution``."""
    outs, _ = _execute(tmp_path, [
        ("readonly", "import numpy as np"), ("solution", solution),
        ("test", "import numpy.testing as nt\nnt.assert_allclose(student_fn(1.0), 2.0)")])
    return _errors(outs[2])


@needs_sandbox
def test_a_thread_patching_around_the_checks_fails_the_tests(tmp_path):
    errors = _test_errors(tmp_path, _THREAD)
    # the thread is caught, or (when the real check was in place at its lookup) it fails
    assert any("a thread running your code" in e for e in errors) or \
        any(e.startswith("AssertionError") and "DESIRED: array(2.)" in e for e in errors), errors


@needs_sandbox
def test_a_check_patched_before_the_test_is_put_back_and_the_test_fails(tmp_path):
    errors = _test_errors(tmp_path, "import numpy.testing as nt\n"
                          "nt.assert_allclose = lambda *a, **k: None\n"
                          "def student_fn(x):\n    return 0")
    assert len(errors) == 1 and errors[0].startswith("AssertionError"), errors
    assert "DESIRED: array(2.)" in errors[0]


_PARTIAL_TIMER = (
    "import threading, functools\nfrom numpy.testing._private import utils as _u\n"
    "_orig = _u.assert_array_compare\ndef student_fn(x):\n"
    "    threading.Timer(0.001, functools.partial(setattr, _u, 'assert_array_compare',\n"
    "                                             lambda *a, **k: None)).start()\n"
    "    threading.Timer(30, functools.partial(setattr, _u, 'assert_array_compare', _orig)).start()\n"
    "    import time\n    time.sleep(0.05)\n    return 0")


@needs_sandbox
def test_a_timer_patching_with_a_builtin_fails_the_tests(tmp_path):
    errors = _test_errors(tmp_path, _PARTIAL_TIMER)
    assert any("a thread running your code" in e for e in errors), errors


# the kernel's handler of execute requests wrapped: it cuts each test down to its seal, puts
# the real handler back while the test runs and its own again afterwards
_HANDLER = (
    "import inspect\nk = get_ipython().kernel\norig = k.shell_handlers['execute_request']\n"
    "async def fake(*args):\n    c = args[-1].get('content', {})\n    code = c.get('code', '')\n"
    "    if \"'seal'\" in code:\n"
    "        c['code'] = '\\n'.join(ln for ln in code.split('\\n') if \"'seal'\" in ln or\n"
    "                              ln.startswith(('def ', '_nq_test', 'del ')))\n"
    "    k.shell_handlers['execute_request'] = orig\n    try:\n        r = orig(*args)\n"
    "        return (await r) if inspect.isawaitable(r) else r\n    finally:\n"
    "        k.shell_handlers['execute_request'] = fake\n"
    "k.shell_handlers['execute_request'] = fake\ndef student_fn(x):\n    return 0")


@needs_sandbox
def test_a_wrapped_kernel_handler_fails_the_tests(tmp_path):
    outs, _ = _execute(tmp_path, [
        ("readonly", "import numpy as np"), ("solution", _HANDLER),
        ("test", "assert student_fn(1.0) == 2.0")])
    assert _errors(outs[2]), outs[2]


@needs_sandbox
def test_library_code_cannot_rewrite_the_test_report(tmp_path):
    outs, _ = _execute(tmp_path, [("test", "assert False, 'never run here'")],
                       library_tests={"0": ["tests/test_forged.py"]})
    assert "0/1 passed" in "".join(o.get("text", "") for o in outs[0]), outs[0]


@needs_sandbox
def test_the_notebook_has_one_time_budget(tmp_path):
    """Each cell within its own timeout, together far over the notebook's: the cells left
    when its time is spent fail without running (they held a grading slot for hours)."""
    nap = "import time\ntime.sleep(2)\nprint('woke')"
    outs, events = _execute(tmp_path, [("readonly", "x = 1")] + [("solution", nap)] * 10
                            + [("test", "assert x == 1")], notebook_timeout=10)
    woke = [i for i, o in enumerate(outs) if any("woke" in x.get("text", "") for x in o)]
    assert len(woke) < 8, woke
    assert "TimeoutError" in str(outs[-1]) and "grading time" in str(outs[-1]), outs[-1]
    assert any("notebook_timeout" in e for e in events), events


_PLANT = '''
import os, signal, subprocess
startup = os.path.expanduser("~/.ipython/profile_default/startup")
os.makedirs(startup, exist_ok=True)
with open(os.path.join(startup, "00-fake.py"), "w") as fh:
    fh.write("import numpy as np\\nnp.allclose = lambda *a, **k: True\\n")
subprocess.Popen(["sleep", "600"], start_new_session=True)
os.kill(os.getpid(), signal.SIGKILL)
'''


@needs_sandbox
def test_a_new_kernel_after_a_crash_starts_clean(tmp_path):
    outs, events = _execute(tmp_path, [
        ("readonly", "import numpy as np"),
        ("solution", _PLANT),
        ("test", "import os\nassert not np.allclose(0.0, 1.0)\n"
                 "print(sorted(os.listdir(os.path.expanduser('~'))))\n"
                 "print(sum(open(f'/proc/{p}/cmdline').read().startswith('sleep')\n"
                 "          for p in os.listdir('/proc') if p.isdigit()))"),
    ])
    assert {"cell": 1, "kernel_died": True} in events
    assert _errors(outs[2]) == [], outs[2]
    printed = "".join(o.get("text", "") for o in outs[2]).split("\n")
    assert printed[:2] == ["['.ipython']", "0"], printed
