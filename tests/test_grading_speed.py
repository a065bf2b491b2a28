"""What makes grading cheap must not change what it does: the preloaded nbgrader server runs
each command in its own process with its own environment, directory and exit status, and the
library-tests helper runs exactly the tests its prefixes name."""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

pytest.importorskip("nbgrader")

from course.tools import run_library_tests  # noqa: E402
from graders.nbgrader_runner import NbgraderServer  # noqa: E402


@pytest.fixture(scope="module")
def server():
    s = NbgraderServer()
    yield s
    s.close()


def test_server_runs_each_command_with_its_own_status_output_and_directory(server, tmp_path):
    ok_log, bad_log = tmp_path / "ok.log", tmp_path / "bad.log"
    code, cpu = server.run(["--version"], tmp_path, dict(os.environ), ok_log)
    assert code == 0 and cpu >= 0
    assert "nbgrader version" in ok_log.read_text()
    (tmp_path / "course").mkdir()
    code, _ = server.run(["autograde", "no_such_assignment"], tmp_path / "course",
                         dict(os.environ), bad_log)
    assert code == 1
    # nbgrader looked for submissions under the command's own working directory
    assert str(tmp_path / "course" / "submitted") in bad_log.read_text()
    # the first command's output file was not written again
    assert "no_such_assignment" not in ok_log.read_text()


def test_server_survives_a_command_that_kills_its_process(server, tmp_path):
    # an unreadable config file makes nbgrader fail; the server still answers afterwards
    code, _ = server.run(["autograde", "x", "--JupyterApp.config_file=/nonexistent/cfg.py"],
                         tmp_path, dict(os.environ), tmp_path / "a.log")
    assert code != 0
    code, _ = server.run(["--version"], tmp_path, dict(os.environ), tmp_path / "b.log")
    assert code == 0


def test_library_tests_run_exactly_the_prefixed_tests():
    prefix = "tests/test_quant_reference.py::test_qgemm_errors"
    results = run_library_tests(REPO, [prefix])
    # the four parametrizations of test_qgemm_errors and nothing else of the file
    assert len(results) == 4, results
    assert all(name.startswith(prefix + "[") for name in results)
    assert all(why is None for why in results.values()), results


def test_a_crash_in_the_library_tests_is_reported_as_a_crash(tmp_path):
    # a segfault kills pytest before it writes its report: say so, not "is pytest installed?"
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_boom.py").write_text(
        "import os, signal\n\ndef test_boom():\n    os.kill(os.getpid(), signal.SIGSEGV)\n")
    got = run_library_tests(tmp_path, ["tests/test_boom.py::test_boom"], timeout=120)
    assert list(got) == ["tests/test_boom.py::test_boom"]
    why = got["tests/test_boom.py::test_boom"]
    assert "crashed (SIGSEGV)" in why and "pytest -x tests/test_boom.py" in why, why
