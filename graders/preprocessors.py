"""nbgrader preprocessors of the course's autograding (configured in graders/nbgrader_config.py).

``RestoreCells`` (before nbgrader's OverwriteCells): the submitted notebook is rebuilt on the
skeleton of the release notebook, so every graded, read-only and solution cell is present
exactly once, in the release's order and with the release's cell type and nbgrader metadata,
whatever the student deleted, moved, duplicated, retyped or whose metadata they edited. The
student's solution sources are kept; cells the student added (or whose nbgrader metadata
names no release cell) stay where they were, as ordinary cells without grading metadata.
This also avoids nbgrader's ``KeyError`` in ``add_missing_grade_cells`` for a deleted test
cell that follows a read-only cell. What was repaired goes into the grading record.

``SandboxedExecute`` (replaces nbgrader's Execute): the notebook runs in
graders/notebook_executor.py inside graders/sandbox.py's sandbox, whose writable area is a
copy of the grading workspace (release + the student's library files), with the data
read-only. Only the outputs come back and are laid onto the trusted notebook, then the
scoring policy is applied to the test cells:

* an exception (including ``GradingIntegrityError`` from the kernel guard and a dead kernel)
  is what fails a test: 0 points for that cell;
* output on stderr never costs points: it is kept, as stdout with a ``[stderr]`` prefix;
* an ``execute_result`` is not a score: it is kept as display output, so no partial credit
  can come from a value student code displays;
* outputs are capped by bytes per cell (``GRADING_CELL_OUTPUT_BYTES``).

The workspace copy is read-only inside the sandbox (the released tests, ``course/`` and the
library files are what the grader put there; ``/tmp`` is the scratch space), and the
library-tests cell (``LIBRARY_TESTS_CELL``) runs the tests the grader's own manifest lists for
this notebook, in a process the executor starts outside the student's kernel.

If the sandbox cannot run at all, every test cell gets an error output saying why (0 points,
the reason in the record), and the notebook is still saved.

Environment (set by graders/autograde.py): ``NQ_GRADING_WS`` the workspace,
``NQ_GRADING_RECORD`` where the JSON record goes, ``NQ_RELEASE_NOTEBOOKS`` the release's
notebook directory, ``NEEDLE_DATA_DIR``, ``NQ_ALLOW_UNISOLATED=1``, ``NQ_CELL_TIMEOUT``, ``NQ_NOTEBOOK_TIMEOUT``.
"""
from __future__ import annotations

import ast
import copy
import json
import os
import sys
from pathlib import Path

import nbformat
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Integer

from .sandbox import SANDBOX_RW, Limits, SandboxUnavailable, cpu_seconds, run_isolated

HERE = Path(__file__).resolve().parent
GRADER_DIR = "/sandbox/grader"
DATA_DIR = "/sandbox/data"
GRADING_CELL_OUTPUT_BYTES = 256 << 10
LIBRARY_TESTS_CELL = "test_library"


def library_test_prefixes(nb_id):
    """The released library tests of a notebook's exercises (the grader's manifest)."""
    from course.manifest import exercises
    return [t for _, ex in exercises(nb_id) for t in ex["pytest"]]


def _nbg(cell):
    nbg = cell.get("metadata", {}).get("nbgrader", {})
    return nbg if isinstance(nbg, dict) else {}


def _gid(cell):
    gid = _nbg(cell).get("grade_id")
    return gid if isinstance(gid, str) and gid else None


def cell_role(cell):
    """'test' | 'solution' | 'readonly' | 'code' | 'markdown' from (trusted) nbgrader metadata."""
    nbg = _nbg(cell)
    if cell.cell_type != "code":
        return "markdown"
    if nbg.get("grade") and not nbg.get("solution"):
        return "test"
    if nbg.get("solution"):
        return "solution"
    if nbg.get("locked"):
        return "readonly"
    return "code"


def defined_names(source):
    """Top-level names a cell binds (functions, classes, imports, assignments)."""
    src = "\n".join(line for line in source.splitlines()
                    if not line.lstrip().startswith(("%", "!")))
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return []
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names += [(a.asname or a.name).split(".")[0] for a in node.names if a.name != "*"]
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                names += [n.id for n in ast.walk(t) if isinstance(n, ast.Name)]
    return sorted(set(names))


def _record(update):
    path = os.environ.get("NQ_GRADING_RECORD")
    if not path:
        return
    p = Path(path)
    rec = json.loads(p.read_text()) if p.exists() else {}
    for k, v in update.items():
        if isinstance(v, list):
            rec.setdefault(k, []).extend(v)
        else:
            rec[k] = v
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(rec, indent=1))


# ---------------------------------------------------------------------------------- cells

def restore_cells(submitted, release):
    """(notebook, repairs): ``submitted`` rebuilt on the skeleton of ``release``."""
    rel_cells = {}
    for c in release.cells:
        gid = _gid(c)
        if gid:
            rel_cells[gid] = c
    repairs = []
    anchored = {None: []}       # release grade_id -> the student's extra cells after it
    student = {}
    anchor = None
    for c in submitted.cells:
        gid = _gid(c)
        if gid in rel_cells and gid not in student:
            student[gid] = c
            anchor = gid
            continue
        extra = copy.deepcopy(c)
        if "nbgrader" in extra.get("metadata", {}):
            del extra.metadata["nbgrader"]
            repairs.append(f"grading metadata removed from an added cell ({gid or 'no id'})")
        anchored.setdefault(anchor, []).append(extra)
    out = list(anchored[None])
    for c in release.cells:
        gid = _gid(c)
        if not gid:
            continue
        rel_role = cell_role(c)
        mine = student.get(gid)
        cell = copy.deepcopy(c)
        if mine is not None and not isinstance(mine.get("source"), str):
            mine.source = "".join(mine.source) if isinstance(mine.source, list) else ""
        if mine is None:
            repairs.append(f"cell {gid} was missing: restored from the release")
        elif rel_role == "solution" or (c.cell_type == "markdown" and _nbg(c).get("solution")):
            cell.source = mine.source
            if mine.cell_type != c.cell_type or _nbg(mine) != _nbg(c):
                repairs.append(f"cell {gid}: cell type / grading metadata restored")
        elif mine.source != c.source or _nbg(mine) != _nbg(c) or mine.cell_type != c.cell_type:
            repairs.append(f"cell {gid} (read-only or test) was changed: restored")
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        out.append(cell)
        out.extend(anchored.get(gid, []))
    nb = copy.deepcopy(submitted)
    nb.cells = out
    return nb, repairs


class RestoreCells(NbGraderPreprocessor):
    """Rebuild the submitted notebook on the release notebook's skeleton (see module doc)."""

    def preprocess(self, nb, resources):
        name = resources["nbgrader"]["notebook"]
        assignment = resources["nbgrader"]["assignment"]
        rel_dir = os.environ.get("NQ_RELEASE_NOTEBOOKS") or os.path.join(
            os.getcwd(), "build", "course", "release", assignment)
        path = Path(rel_dir) / f"{name}.ipynb"
        release = nbformat.read(str(path), as_version=4)
        nb, repairs = restore_cells(nb, release)
        for r in repairs:
            self.log.warning(r)
        _record({"repairs": repairs})
        return nb, resources


# ---------------------------------------------------------------------------------- execute

def apply_policy(cell, cap=GRADING_CELL_OUTPUT_BYTES):
    """Scoring policy of a test cell's outputs (module doc), in place."""
    outs = []
    used = 0
    for o in cell.get("outputs", []):
        o = copy.deepcopy(o)
        if o.get("output_type") == "stream" and o.get("name") == "stderr":
            o["name"] = "stdout"
            o["text"] = "".join(f"[stderr] {line}" for line in
                                str(o.get("text", "")).splitlines(keepends=True))
        elif o.get("output_type") == "execute_result":
            o = nbformat.v4.new_output("display_data", data=o.get("data", {}),
                                       metadata=o.get("metadata", {}))
        size = len(json.dumps(o))
        if o.get("output_type") != "error":
            if used + size > cap:
                if used <= cap:
                    outs.append(nbformat.v4.new_output(
                        "stream", name="stdout", text=f"\n[output truncated at {cap} bytes]\n"))
                used = cap + 1
                continue
            used += size
        outs.append(nbformat.from_dict(o))
    cell.outputs = outs


class SandboxedExecute(NbGraderPreprocessor):
    """Execute the notebook in the sandbox and apply the scoring policy (see module doc)."""

    timeout = Integer(900, help="seconds per cell, then the cell is interrupted").tag(config=True)
    notebook_timeout = Integer(3600, help="seconds for the whole notebook, then its remaining "
                                          "cells fail").tag(config=True)
    cell_output_bytes = Integer(GRADING_CELL_OUTPUT_BYTES).tag(config=True)

    def preprocess(self, nb, resources):
        ws = os.environ.get("NQ_GRADING_WS") or os.environ.get("NEEDLE_ROOT")
        timeout = int(os.environ.get("NQ_CELL_TIMEOUT") or self.timeout)
        nb_timeout = int(os.environ.get("NQ_NOTEBOOK_TIMEOUT") or self.notebook_timeout)
        roles = [cell_role(c) for c in nb.cells]
        ro_names = {i: defined_names(c.source) for i, c in enumerate(nb.cells)
                    if roles[i] == "readonly"}
        test_names = {i: defined_names(c.source) for i, c in enumerate(nb.cells)
                      if roles[i] == "test"}
        lib_cells = {i: library_test_prefixes(resources["nbgrader"]["notebook"])
                     for i, c in enumerate(nb.cells)
                     if roles[i] == "test" and _gid(c) == LIBRARY_TESTS_CELL}
        job = {"notebook": nb, "roles": roles, "readonly_names": ro_names,
               "library_tests": lib_cells, "root": SANDBOX_RW,
               "test_names": test_names, "timeout": timeout, "notebook_timeout": nb_timeout,
               "cell_output_bytes": self.cell_output_bytes,
               "guard_path": f"{GRADER_DIR}/kernel_guard.py",
               "pytest_guard_path": f"{GRADER_DIR}/pytest_guard.py",
               "cwd": f"{SANDBOX_RW}/notebooks"}
        from .sandbox import probe
        job["isolated"] = probe()["isolated"]
        if not probe()["isolated"]:     # graded unisolated (allowed explicitly): host paths
            job["guard_path"], job["cwd"] = str(HERE / "kernel_guard.py"), f"{ws}/notebooks"
            job["root"], job["pytest_guard_path"] = str(ws), str(HERE / "pytest_guard.py")
        binds = [(HERE / "notebook_executor.py", f"{GRADER_DIR}/notebook_executor.py"),
                 (HERE / "kernel_guard.py", f"{GRADER_DIR}/kernel_guard.py"),
                 (HERE / "pytest_guard.py", f"{GRADER_DIR}/pytest_guard.py")]
        data = os.environ.get("NEEDLE_DATA_DIR")
        if data and os.path.isdir(data):
            binds.append((data, DATA_DIR))
        n_cells = sum(r != "markdown" for r in roles)
        # the executor stops at nb_timeout; the sandbox's limit is the backstop behind it
        whole = min(timeout * max(n_cells, 1), nb_timeout + timeout) + 120
        limits = Limits(wall_seconds=whole, cpu_seconds=whole,
                        result_bytes=(self.cell_output_bytes + (64 << 10)) * (len(nb.cells) + 1)
                        + len(json.dumps(nb)))
        env = {"NEEDLE_ROOT": SANDBOX_RW, "NEEDLE_DATA_DIR": DATA_DIR, "MPLBACKEND": "Agg",
               "JUPYTER_PLATFORM_DIRS": "1", "OMP_NUM_THREADS": os.environ.get(
                   "OMP_NUM_THREADS", "2")}
        for k in ("NEEDLE_GRADE_CUDA", "NEEDLE_SETUP_BUILD", "CUDA_VISIBLE_DEVICES",
                  "NEEDLE_TEST_PROFILE"):
            if k in os.environ:
                env[k] = os.environ[k]
        reason, result = "", None
        cpu0 = cpu_seconds()
        try:
            res = run_isolated([sys.executable, f"{GRADER_DIR}/notebook_executor.py"],
                               rw_dir=ws, ro_binds=binds, workdir=f"{SANDBOX_RW}/notebooks",
                               limits=limits, env=env, copy_back=False, readonly_rw=True,
                               allow_unisolated=os.environ.get("NQ_ALLOW_UNISOLATED") == "1",
                               stdin=json.dumps(job).encode())
            _record({"isolation": res.isolation})
            if res.result:
                result = json.loads(res.result)
                _record({"profile": {"nbgrader_before_execute_cpu": round(cpu0["self"], 2),
                                     "sandbox_cpu": round(cpu_seconds()["children"]
                                                          - cpu0["children"], 2),
                                     "sandbox_wall": round(res.seconds, 1),
                                     **result.get("profile", {})}})
            else:
                reason = (f"the notebook's execution ended without a result (exit "
                          f"{res.returncode}{', timed out' if res.timed_out else ''}): "
                          + res.stderr.decode(errors="replace")[-500:])
        except SandboxUnavailable as e:
            reason = str(e)
            _record({"isolation": {"method": "refused", "reason": str(e)}})
        except (ValueError, RuntimeError, json.JSONDecodeError) as e:
            reason = f"{type(e).__name__}: {e}"
        if result is not None:
            got = result["notebook"]["cells"]
            if len(got) != len(nb.cells):
                reason = "the executed notebook came back with a different number of cells"
            else:
                for cell, g in zip(nb.cells, got):
                    if cell.cell_type == "code":
                        cell.outputs = [nbformat.from_dict(o) for o in g.get("outputs", [])]
                        cell.execution_count = g.get("execution_count")
                _record({"events": result.get("events", [])})
        if reason:
            self.log.error("grading failed: %s", reason)
            _record({"errors": [reason]})
            for cell, role in zip(nb.cells, roles):
                if role == "test":
                    cell.outputs = [nbformat.v4.new_output(
                        "error", ename="GradingError", evalue=reason[:2000],
                        traceback=[f"GradingError: {reason[:2000]}"])]
        for cell, role in zip(nb.cells, roles):
            if role == "test":
                apply_policy(cell, self.cell_output_bytes)
        return nb, resources
