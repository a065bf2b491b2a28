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
* outputs are capped by bytes per cell (errors are always kept, their tracebacks shortened);
* a kernel that dies (a crash in native code) costs only the cell that was running: the
  executor starts a new kernel, replays the notebook's non-test cells before it and goes on.
"""
from __future__ import annotations

import ast
import ctypes
import json
import os
import sys
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
    cap = int(job["cell_output_bytes"])
    guard_src = open(job["guard_path"]).read()
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

    def request(client, expr=None, code=""):
        """Run code / a user expression silently; returns (status, text, late iopub msgs)."""
        kc = client.kc
        msg_id = kc.execute(code, silent=True, store_history=False,
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

    def install(client):
        status, text, _ = request(client, code=guard_src)
        if status == "ok":
            status, text, _ = request(client, "__import__('sys').modules['_nq_guard'].rebase()")
        if status != "ok":
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
        if role == "test" and not replay:
            status, text, _ = request(client, "__import__('sys').modules['_nq_guard'].restore()")
            if status != "ok":
                integrity_error(cell, f"the grading guard was removed or broken ({text})")
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
        try:
            client.execute_cell(cell, i)
        finally:
            kc.execute = orig
        if role == "readonly" and ro_names.get(i):
            request(client, f"__import__('sys').modules['_nq_guard'].save({ro_names[i]!r})")
        if role == "test" and not replay:
            status, text, late = request(
                client, f"__import__('sys').modules['_nq_guard'].check({test_names.get(i, [])!r})")
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
            if status != "ok":
                integrity_error(cell, f"the grading guard was removed or broken ({text})")
            elif text != "ok":
                integrity_error(cell, f"changed while the test ran: {text}")

    crashed, restarts, i, replay_to = set(), 0, 0, 0
    cells = nb.cells
    while i < len(cells):
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
