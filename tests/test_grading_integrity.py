"""The grader's own pieces that need no nbgrader run: the notebook repair, the scoring policy,
the sandbox (instructor-only: not released)."""
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
