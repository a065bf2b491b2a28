"""pytest plugin of grading: the library tests compare with the real numpy.

The library-tests cell's pytest (started by graders/notebook_executor.py, outside the
student's kernel) imports the student's library files, which could replace numpy's
comparisons (``np.allclose = lambda *a, **k: True``) on import. Loaded through
``PYTEST_PLUGINS`` before any test module is collected, this plugin snapshots the callables of
the modules the tests compare with; before each test it puts back anything changed since and
after it fails the test (``GradingIntegrityError``) if anything changed before or while it
ran. Once pytest has written its report the process ends at once (``os._exit``), so no
``atexit`` handler or thread the library started can rewrite the report afterwards. Like the
kernel guard it shares the process with student code: it stops the generic tricks, not code
written against pytest's internals.
"""
import os
import sys

import pytest

PROTECTED = ("numpy", "numpy.testing", "math", "operator", "builtins")


class GradingIntegrityError(AssertionError):
    """Student code changed what the tests compare with."""


def _callables(mod):
    return {k: v for k, v in vars(mod).items() if callable(v)}


for _name in PROTECTED:
    __import__(_name)
_BASE = {n: _callables(sys.modules[n]) for n in PROTECTED}


def _changed(restore):
    bad = []
    for n, base in _BASE.items():
        mod = sys.modules[n]
        cur = vars(mod)
        for k, v in base.items():
            if cur.get(k) is not v:
                bad.append(f"{n}.{k}")
                if restore:
                    setattr(mod, k, v)
    return bad


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    before = _changed(restore=True)
    try:
        return (yield)
    finally:
        after = _changed(restore=True)
        if before or after:
            raise GradingIntegrityError(
                "student code replaced functions the tests rely on: "
                + ", ".join(sorted(set(before + after))[:8]))


_EXIT = {"status": 1}


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    _EXIT["status"] = int(exitstatus)


def _stop_the_rest_of_the_group():
    """SIGKILL every other process of this process group (the runner starts pytest as a
    group of its own): a process the library left behind cannot rewrite the report."""
    import signal
    me, group = os.getpid(), os.getpgid(0)
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return
    for pid in pids:
        try:
            if pid != me and os.getpgid(pid) == group:
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    # the junit report was written at session finish: nothing the library left behind runs
    _stop_the_rest_of_the_group()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed or replaced stream: nothing to flush
            pass
    os._exit(_EXIT["status"])
