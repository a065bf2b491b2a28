"""The fast wrong-solution audit counts a mutation as caught only when a test fails: a run that
times out (a hang, or a mutant merely slow) shows nothing about whether the tests pin the rule."""
import graders.audit_fast as af


def _ws(tmp_path):
    (tmp_path / "notebooks").mkdir()
    return tmp_path


def _cells(*tests):
    return [("code", "setup", "x = 1")] + [("test", g, src) for g, src in tests]


def test_assertion_failure_is_caught(monkeypatch, tmp_path):
    monkeypatch.setattr(af, "notebook_cells", lambda name, patches=(): _cells(
        ("t_ok", "assert x == 1"), ("t_bad", "assert x == 2"), ("t_after", "pass")))
    got = af.run_tests(_ws(tmp_path), "nb", timeout=60, stop_on=["t_ok", "t_bad", "t_after"])
    assert got["t_ok"] == (True, "")
    assert got["t_bad"][0] is False and got["t_bad"][1].startswith("AssertionError")
    assert got["t_after"] == (False, af.NOT_REACHED)
    caught, note = af._caught("nb", ["t_ok", "t_bad", "t_after"], got)
    assert caught == ["nb:t_bad"] and note == ""


def test_timeout_before_any_failure_is_not_caught(monkeypatch, tmp_path):
    monkeypatch.setattr(af, "notebook_cells", lambda name, patches=(): _cells(
        ("t_ok", "assert x == 1"), ("t_hang", "import time; time.sleep(60)"), ("t_after", "pass")))
    got = af.run_tests(_ws(tmp_path), "nb", timeout=3, stop_on=["t_ok", "t_hang", "t_after"])
    assert got["t_ok"] == (True, "")
    assert got["t_hang"][0] is False and got["t_hang"][1].startswith(af.TIMED_OUT[:-1])
    caught, note = af._caught("nb", ["t_ok", "t_hang", "t_after"], got)
    assert caught == []
    assert "TIMED OUT" in note and "nb" in note


def test_failure_before_a_timeout_is_caught():
    timed_out = (False, af.TIMED_OUT[:-1] + " after 3 s)")
    got = {"a": (True, ""), "b": (False, "ValueError: wrong"), "c": timed_out}
    assert af._caught("nb", ["a", "b", "c"], got) == (["nb:b"], "")


def test_crash_before_any_failure_is_caught():
    # a crash of the interpreter (a segfaulting kernel) loses every point under nbgrader too
    got = {"a": (False, af.NOT_REACHED), "b": (False, af.NOT_REACHED)}
    assert af._caught("nb", ["a", "b"], got) == (["nb:a"], "")


def test_crash_of_the_runner_is_a_crash_not_a_timeout(monkeypatch, tmp_path):
    monkeypatch.setattr(af, "notebook_cells", lambda name, patches=(): _cells(
        ("t_ok", "assert x == 1"), ("t_die", "import os; os._exit(139)"), ("t_after", "pass")))
    got = af.run_tests(_ws(tmp_path), "nb", timeout=60, stop_on=["t_ok", "t_die", "t_after"])
    assert got["t_die"] == (False, af.NOT_REACHED)
    assert af._caught("nb", ["t_ok", "t_die", "t_after"], got) == (["nb:t_die"], "")
