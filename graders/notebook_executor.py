"""Execute one notebook for grading, inside the sandbox (graders/sandbox.py).

Started by graders/sandboxed_execute.py as ``python notebook_executor.py`` with a JSON job on
stdin (the notebook, each cell's role, limits) and writes ``{"notebook", "events"}`` as JSON
to the sandbox's result descriptor (3), which the kernel cannot reach: the executor makes
itself non-dumpable (no /proc/<pid>/fd, no ptrace by the kernel's uid) and the descriptor is
not inherited. Per cell:

* before the first cell the kernel guard (graders/kernel_guard.py) is installed; after each
  read-only cell the names it defines are saved; before each test cell the guard restores
  hooks, helpers and library functions, after it ``check()`` fails the test if they were
  changed while it ran;
* after each test cell a fence request drains everything the kernel still publishes for it
  (outputs after a forged "idle" status are kept, the forgery fails the test);
* each cell has its timeout and the whole notebook ``job["notebook_timeout"]`` seconds (the
  cells left when it is spent fail without running);
* outputs are capped by bytes per cell (errors are always kept, their tracebacks shortened);
* a kernel that dies (a crash in native code) costs only the cell that was running: the
  executor starts a new kernel, replays the notebook's non-test cells before it and goes on.
  Before a new kernel starts, everything the old one left running is killed and ``HOME`` is
  emptied (an IPython startup file, a kernel spec or a matplotlibrc planted there would
  otherwise run in, or replace, the new kernel);
* the library-tests cell (``job["library_tests"]``: its index and the pytest prefixes, from
  the grader's manifest) is not run in the kernel: the executor runs those tests itself
  (course/tools.py of the read-only workspace, pytest in a process of its own with
  graders/pytest_guard.py loaded first, so library code cannot fake numpy) with every
  process of the student's kernel stopped meanwhile, and writes the cell's outputs as the cell
  would have: the summary, and an ``AssertionError`` carrying ``{test: failure}``. Nothing the
  kernel ran can patch the runner, the test list or pytest.
"""
from __future__ import annotations

import ast
import ctypes
import hashlib
import hmac
import json
import os
import shutil
import secrets
import signal
import sys
import tempfile
import time

RESULT_FD = 3
MAX_RESTARTS = 8
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_of(pid):
    """CPU seconds of a process and of its waited-for children (/proc/<pid>/stat), or None."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return sum(int(x) for x in fields[11:15]) / _TICK    # utime stime cutime cstime


def _own_cpu():
    import resource
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"self": round(me.ru_utime + me.ru_stime, 2),
            "children": round(kids.ru_utime + kids.ru_stime, 2)}


def _harden():
    try:
        os.set_inheritable(RESULT_FD, False)
    except OSError:
        pass
    try:   # PR_SET_DUMPABLE = 4: the kernel (same uid) cannot open our fds or ptrace us
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _isolated(job):
    """True inside the sandbox's namespaces as its unprivileged uid: only there does
    kill(-1) reach exactly the student's processes (never on a host, never as root)."""
    return bool(job.get("isolated")) and os.getuid() != 0 and os.getpid() != 1


def _signal_others(job, sig):
    if _isolated(job):
        try:
            os.kill(-1, sig)      # every process of this uid but the executor itself
        except (ProcessLookupError, PermissionError):
            pass


def _fresh_home():
    """Empty HOME (the kernels' and the executor's, on the sandbox's /tmp)."""
    home = os.environ.get("HOME")
    if not home or not os.path.isdir(home) or home in ("/", "/root"):
        return
    for name in os.listdir(home):
        p = os.path.join(home, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                os.unlink(p)
            except OSError:
                pass


def library_tests_outputs(job, prefixes):
    """The library-tests cell's outputs, from the released tests run outside the kernel."""
    import nbformat
    root = job["root"]
    if root not in sys.path:
        sys.path.insert(0, root)
    _signal_others(job, signal.SIGSTOP)   # the kernel and all it started: frozen meanwhile
    env_before = dict(os.environ)
    plugins = tempfile.mkdtemp(prefix="nq-pytest-")
    try:
        # graders/pytest_guard.py, loaded before any test module: numpy stays numpy
        if job.get("pytest_guard_path"):
            shutil.copyfile(job["pytest_guard_path"], os.path.join(plugins, "_nq_pytest_guard.py"))
            os.environ["PYTEST_PLUGINS"] = "_nq_pytest_guard"
            os.environ["PYTHONPATH"] = os.pathsep.join(
                [plugins] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        from course.tools import run_library_tests
        results = run_library_tests(__import__("pathlib").Path(root), prefixes,
                                    timeout=job["timeout"])
    except Exception as e:  # noqa: BLE001 - a runner that cannot run fails the cell
        results = {"(library tests)": f"the library tests did not run: {type(e).__name__}: {e}"}
    finally:
        os.environ.clear()
        os.environ.update(env_before)
        shutil.rmtree(plugins, ignore_errors=True)
        _signal_others(job, signal.SIGCONT)
    failed = {name: why for name, why in results.items() if why is not None}
    outs = [nbformat.v4.new_output("stream", name="stdout", text=(
        f"library tests (run by the grader): {len(results) - len(failed)}/{len(results)} "
        f"passed\n"))]
    if not results or failed:
        outs.append(nbformat.v4.new_output(
            "error", ename="AssertionError", evalue=str(failed),
            traceback=[f"AssertionError: {failed}"]))
    return outs


def sealed_test(source, event):
    """A test cell's code as the kernel runs it: inside a function (the test's variables are
    locals, not globals a solution could read; they are published when it returns) that ends
    with the guard's seal. Lines continuing a multi-line string keep their indentation."""
    import io
    import tokenize
    name = "_nq_test_" + secrets.token_hex(4)
    lines = source.splitlines()
    inside = set()
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source + "\n").readline):
            if tok.type == tokenize.STRING and tok.end[0] > tok.start[0]:
                inside.update(range(tok.start[0], tok.end[0]))
        ast.parse(source)
    except (tokenize.TokenError, SyntaxError, ValueError):
        inside = None           # the cell's own error shows as it is, unwrapped
    seal = f"__import__('sys').audit({event!r}, 'seal')"
    if inside is None:
        return source + "\n" + seal
    body = ["    " + ln if ln.strip() and i not in inside else ln for i, ln in enumerate(lines)]
    return "\n".join([f"def {name}():"] + body + [
        "    " + seal, "    globals().update(locals())", f"{name}()", f"del {name}"])


def main():
    _harden()
    job = json.loads(sys.stdin.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)          # the job (hidden tests) is not left for the kernel to read
    os.close(devnull)
    # nbformat imports jsonschema, which builds an IRI parser at import when rfc3987_syntax
    # is installed (~3 CPU-s per grading) for a format no notebook schema uses
    sys.modules.setdefault("rfc3987_syntax", None)
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError
    from nbclient.util import run_sync
    from nbformat.v4 import output_from_msg

    nb = nbformat.from_dict(job["notebook"])
    roles = job["roles"]
    ro_names = {int(k): v for k, v in job["readonly_names"].items()}
    test_names = {int(k): v for k, v in job.get("test_names", {}).items()}
    library_tests = {int(k): v for k, v in job.get("library_tests", {}).items()}
    cap = int(job["cell_output_bytes"])
    guard_src = open(job["guard_path"]).read()
    keys = {}
    events = []
    # where the CPU goes (kernel seconds per cell, kernel starts, the executor itself)
    profile = {"executor_start_cpu": _own_cpu(), "kernel_start_cpu": [], "cells": {},
               "replay_cpu": 0.0}

    class CappedClient(NotebookClient):
        """Keeps at most ``cap`` bytes of outputs per cell; error outputs always."""
        used: dict = {}

        def output(self, outs, msg, display_id, cell_index):
            content = msg.get("content", {})
            if msg["msg_type"] == "error":
                content["traceback"] = [t[:4000] for t in content.get("traceback", [])[-30:]]
                return super().output(outs, msg, display_id, cell_index)
            size = len(json.dumps(content))
            used = self.used.get(cell_index, 0)
            if used + size > cap:
                if used <= cap:
                    outs.append(nbformat.v4.new_output(
                        "stream", name="stdout",
                        text=f"\n[output truncated: this cell printed more than {cap} bytes]\n"))
                self.used[cell_index] = cap + 1
                return None
            self.used[cell_index] = used + size
            return super().output(outs, msg, display_id, cell_index)

    def new_client():
        c = CappedClient(nb, timeout=job["timeout"], allow_errors=True,
                         interrupt_on_timeout=True, kernel_name=job.get("kernel_name", "python3"),
                         record_timing=False, shutdown_kernel="immediate",
                         resources={"metadata": {"path": job["cwd"]}})
        c.used = {}
        return c

    def request(client, expr=None, code="", silent=True):
        """Run code / a user expression (silently); returns (status, text, late iopub msgs)."""
        kc = client.kc
        msg_id = kc.execute(code, silent=silent, store_history=False,
                            user_expressions={"g": expr} if expr else {})
        deadline = time.time() + 120
        reply = None
        while reply is None:
            msg = run_sync(kc.get_shell_msg)(timeout=max(1, deadline - time.time()))
            if msg["parent_header"].get("msg_id") == msg_id:
                reply = msg
        late = []
        while True:   # everything published before our request finished
            msg = run_sync(kc.get_iopub_msg)(timeout=max(1, deadline - time.time()))
            if msg["parent_header"].get("msg_id") == msg_id:
                if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    break
                continue
            late.append(msg)
        content = reply["content"]
        if content.get("status") != "ok":
            return "error", content.get("ename", "") + ": " + content.get("evalue", ""), late
        if not expr:
            return "ok", "", late
        res = content.get("user_expressions", {}).get("g", {})
        if res.get("status") != "ok":
            return "error", res.get("ename", "") + ": " + res.get("evalue", ""), late
        text = str(res.get("data", {}).get("text/plain", ""))
        try:
            text = str(ast.literal_eval(text))
        except (ValueError, SyntaxError):
            pass
        return "ok", text, late

    def integrity_error(cell, why):
        cell.outputs.append(nbformat.v4.new_output(
            "error", ename="GradingIntegrityError", evalue=why,
            traceback=[f"GradingIntegrityError: {why}"]))

    def mac(*parts):
        return hmac.new(bytes.fromhex(keys["key"]), ":".join(parts).encode(),
                        hashlib.sha256).hexdigest()

    def guard_call(method, *args):
        """(nonce, the expression that calls the guard's ``method`` with its HMAC)."""
        nonce = secrets.token_hex(16)
        margs = tuple(list(a) if isinstance(a, (list, tuple, set)) else str(a) for a in args)
        auth = mac("req", nonce, method, repr(margs))
        return nonce, (f"(lambda b: [__import__('sys').audit({keys['event']!r}, 'call', "
                       f"{method!r}, {nonce!r}, {margs!r}, b, {auth!r}), b][1])([])")

    def guard(client, method, *args):
        """(status, verdict, late msgs) of the guard's ``method``: the request carries its
        HMAC under this kernel's key; 'error' unless the answer carries the HMAC of the
        request's fresh nonce and the verdict."""
        nonce, call = guard_call(method, *args)
        status, text, late = request(client, call)
        if status != "ok":
            return status, text, late
        try:
            box = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            box = None
        if not (isinstance(box, list) and len(box) == 1 and isinstance(box[0], str)):
            return "error", "it did not answer", late
        verdict, _, got = box[0].rpartition("|")
        if not hmac.compare_digest(got, mac(nonce, verdict)):
            return "error", "its answer was forged", late
        return "ok", verdict, late

    def install(client):
        # a fresh event name and key per kernel; the guard's code runs in a namespace of
        # its own, with the builtins as they are before any student code ran
        keys.update(event="nq.grading." + secrets.token_hex(8), key=secrets.token_hex(32))
        src = guard_src + f"\ninstall({keys['event']!r}, {keys['key']!r})\n"
        status, text, _ = request(client, code=(
            f"exec(compile({src!r}, '<grading guard>', 'exec'), {{'__name__': "
            f"'_grading_guard', '__builtins__': dict(vars(__import__('builtins')))}})"))
        if status == "ok":
            status, text, _ = guard(client, "rebase")
        if status == "ok":      # learn what the kernel swaps in a cell run as tests are
            request(client, code=guard_call("learn")[1], silent=False)
            status, text, _ = guard(client, "ping")
        if status != "ok" or text != "ok":
            raise RuntimeError(f"kernel guard did not install: {text}")

    def kernel_cpu(client):
        return _cpu_of(getattr(client.km.provisioner, "pid", None) or 0) or 0.0

    def run_cell(client, i, cell, replay=False):
        t0, c0 = time.time(), kernel_cpu(client)
        try:
            _run_cell(client, i, cell, replay)
        finally:
            used = kernel_cpu(client) - c0
            if replay:
                profile["replay_cpu"] += used
            else:
                profile["cells"][i] = round(used, 2)
            if time.time() - t0 > 5:
                events.append({"cell": i, "seconds": round(time.time() - t0, 1)})

    def _run_cell(client, i, cell, replay):
        role = roles[i]
        if role == "test" and i in library_tests:
            if not replay:
                cell.outputs = library_tests_outputs(job, library_tests[i])
                cell.execution_count = None
            return
        if role == "test" and not replay:
            status, text, _ = guard(client, "restore", test_names.get(i, []))
            if status != "ok":
                integrity_error(cell, f"the grading guard was removed or broken ({text})")
                return
            if text.startswith("error"):    # the guard could not arm: the test cannot count
                integrity_error(cell, f"the grading guard could not check this test ({text})")
                return
            if text != "ok":
                events.append({"cell": i, "restored": text})
        sent = {}
        kc = client.kc
        orig = kc.execute

        def execute(*a, **kw):
            sent["id"] = orig(*a, **kw)
            return sent["id"]
        kc.execute = execute
        source = cell.source
        if role == "test" and not replay:
            cell.source = sealed_test(source, keys["event"])
        try:
            # test cells stay out of the kernel's input history (In, _ih): the restored cells
            # hold the hidden tests, and a later cell printing In would show them
            client.execute_cell(cell, i, store_history=role != "test")
        finally:
            kc.execute = orig
            cell.source = source
        if role == "readonly" and ro_names.get(i):
            status, text, _ = guard(client, "save", ro_names[i])
            if status != "ok":
                events.append({"cell": i, "guard": text})
        if role == "test" and not replay:
            status, text, late = guard(client, "verdict")
            forged = False
            for msg in late:
                if msg["parent_header"].get("msg_id") != sent.get("id"):
                    continue
                if msg["msg_type"] == "status":
                    forged = forged or msg["content"]["execution_state"] == "idle"
                elif msg["msg_type"] in ("stream", "error", "display_data", "execute_result"):
                    cell.outputs.append(output_from_msg(msg))
            if forged:
                integrity_error(cell, "the kernel reported this cell finished before it did")
            failed = any(o.get("output_type") == "error" for o in cell.outputs)
            if status != "ok":
                integrity_error(cell, f"the grading guard was removed or broken ({text})")
            elif text.startswith("not sealed"):
                if not failed:      # no error shown, yet the test's last line never ran
                    integrity_error(cell, "the test cell did not run to its end")
            elif text != "ok":
                integrity_error(cell, f"changed while the test ran: {text}")

    crashed, restarts, i, replay_to = set(), 0, 0, 0
    cells = nb.cells
    # the whole notebook's time: without it a few sleeping cells, each within its own
    # timeout, hold a grading slot for hours
    budget = float(job.get("notebook_timeout") or 0) or None
    deadline = time.time() + budget if budget else None

    def out_of_time(client):
        """True (and the remaining code cells failed) once the notebook's time is spent;
        else the next cell's timeout is what is left of it."""
        if deadline is None:
            return False
        left = deadline - time.time()
        if left > 1:     # (at least 5 s: a cell interrupted at once would only be noise)
            client.timeout = min(int(job["timeout"]), max(int(left), 5))
            return False
        for c in cells[i:]:
            if c.cell_type == "code":
                c.outputs = [nbformat.v4.new_output(
                    "error", ename="TimeoutError",
                    evalue=f"the notebook used all of its grading time ({budget:.0f} s); "
                           f"this cell did not run",
                    traceback=["TimeoutError: the notebook's grading time was used up"])]
        events.append({"cell": i, "notebook_timeout": budget})
        return True
    while i < len(cells):
        if restarts:
            _signal_others(job, signal.SIGKILL)   # what the dead kernel left running
            _fresh_home()
        client = new_client()
        try:
            with client.setup_kernel(stdout=open(os.devnull, "w")):
                install(client)
                profile["kernel_start_cpu"].append(round(kernel_cpu(client), 2))
                for j in range(replay_to):
                    if roles[j] in ("readonly", "solution", "code") and j not in crashed:
                        scratch = nbformat.from_dict(json.loads(json.dumps(cells[j])))
                        scratch.outputs = []
                        run_cell(client, j, scratch, replay=True)
                while i < len(cells):
                    if cells[i].cell_type == "code":
                        if out_of_time(client):
                            i = len(cells)
                            break
                        run_cell(client, i, cells[i])
                    i += 1
        except DeadKernelError:
            cells[i].outputs.append(nbformat.v4.new_output(
                "error", ename="DeadKernelError",
                evalue="the kernel died while this cell ran (a crash in native code?); "
                       "the cells after it ran in a new kernel",
                traceback=["DeadKernelError: the kernel died while this cell ran"]))
            events.append({"cell": i, "kernel_died": True})
            crashed.add(i)
            restarts += 1
            i += 1
            replay_to = i
            if restarts > MAX_RESTARTS:
                for c in cells[i:]:
                    if c.cell_type == "code":
                        c.outputs = [nbformat.v4.new_output(
                            "error", ename="DeadKernelError", evalue="too many kernel crashes",
                            traceback=["DeadKernelError: too many kernel crashes"])]
                break
    profile["executor_end_cpu"] = _own_cpu()
    out = json.dumps({"notebook": nb, "events": events, "restarts": restarts,
                      "profile": profile}).encode()
    with os.fdopen(RESULT_FD, "wb") as fh:
        fh.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
