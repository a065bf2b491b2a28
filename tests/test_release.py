"""Unit tests of the solution stripper (graders/strip.py) on small synthetic sources."""
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from graders.strip import (StripError, enclosing_cpp_function, enclosing_cpp_function_kind,  # noqa: E402
                           find_regions, strip_source)

B, E = "### BEGIN SOLUTION", "### END SOLUTION"
HB, HE = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
CB, CE = "// BEGIN SOLUTION", "// END SOLUTION"


def _py(src):
    return textwrap.dedent(src).replace("<B>", B).replace("<E>", E) \
        .replace("<HB>", HB).replace("<HE>", HE)


def _cpp(src):
    return textwrap.dedent(src).replace("<B>", CB).replace("<E>", CE)


def test_python_region_becomes_raise_at_marker_indentation():
    src = _py("""\
        def f(x):
            y = 1
            <B>
            return x + y
            <E>
        """)
    out = strip_source(src, "python")
    assert out == "def f(x):\n    y = 1\n    # YOUR CODE HERE\n    raise NotImplementedError()\n"
    ns = {}
    exec(compile(out, "<stripped>", "exec"), ns)
    with pytest.raises(NotImplementedError):
        ns["f"](1)


def test_python_nested_region_keeps_code_around_it():
    src = _py("""\
        class Q:
            def g(self, xs):
                total = 0
                for x in xs:
                    if x > 0:
                        <B>
                        total += x * x
                        <E>
                return total

        def after():
            return 7
        """)
    out = strip_source(src, "python")
    assert "\n                # YOUR CODE HERE\n" \
           "                raise NotImplementedError()\n        return total\n" in out
    assert "x * x" not in out
    ns = {}
    exec(compile(out, "<stripped>", "exec"), ns)
    assert ns["after"]() == 7
    assert ns["Q"]().g([-1, -2]) == 0          # the branch with the stub is not taken
    with pytest.raises(NotImplementedError):
        ns["Q"]().g([3])


def test_python_several_regions_and_hidden_tests():
    src = _py("""\
        def a():
            <B>
            return 1
            <E>

        def b():
            <B>
            return 2
            <E>

        assert True
        <HB>
        assert a() == 1  # secret
        <HE>
        """)
    out = strip_source(src, "python")
    assert out.count("raise NotImplementedError()") == 2
    assert "secret" not in out and "HIDDEN" not in out and "SOLUTION" not in out
    assert out.rstrip().endswith("assert True")


def test_file_without_markers_is_unchanged():
    src = "def f():\n    return 'BEGIN SOLUTION in a string is not a marker'\n"
    assert strip_source(src, "python") == src


def test_crlf_line_endings_are_kept():
    src = f"def f():\r\n    {B}\r\n    return 1\r\n    {E}\r\n"
    assert strip_source(src, "python") == \
        "def f():\r\n    # YOUR CODE HERE\r\n    raise NotImplementedError()\r\n"


@pytest.mark.parametrize("src, message", [
    (f"def f():\n    {B}\n    return 1\n", "never closed"),
    (f"def f():\n    return 1\n    {E}\n", "without a matching BEGIN"),
    (f"def f():\n    {B}\n    {B}\n    return 1\n    {E}\n    {E}\n", "do not nest"),
    (f"def f():\n    {B}\n    return 1\n    {HE}\n", "closes the SOLUTION region"),
    ("def f():\n    ### BEGIN SOLUTION please\n    return 1\n", "malformed marker"),
])
def test_unbalanced_markers_raise_with_file_and_line(src, message):
    with pytest.raises(StripError, match=message) as err:
        strip_source(src, "python", "mod.py")
    assert "mod.py:" in str(err.value)


def test_cpp_region_becomes_throw_naming_the_function():
    src = _cpp("""\
        #include <cstdint>
        namespace needle {
        namespace cpu {
        // Sum of a row.
        int32_t row_sum(const int8_t* a, int64_t n) {
          int32_t s = 0;
          <B>
          for (int64_t i = 0; i < n; ++i) { s += a[i]; }
          <E>
          return s;
        }
        }  // namespace cpu
        }  // namespace needle
        """)
    out = strip_source(src, "cpp")
    assert '  throw std::runtime_error("not implemented: row_sum");\n' in out
    assert "s += a[i]" not in out
    assert "#include <stdexcept>" in out


def test_cpp_region_inside_loop_and_method_uses_innermost_function():
    src = _cpp("""\
        #include <stdexcept>
        struct Packer {
          void pack(const char* s, int n) const {
            auto f = [&](int i) { return s[i]; };
            for (int i = 0; i < n; ++i) {
              if (i % 2 == 0) {
                <B>
                (void)f(i);
                <E>
              }
            }
          }
        };
        int other(int x) { return x; }
        """)
    out = strip_source(src, "cpp")
    assert '        throw std::runtime_error("not implemented: pack");' in out
    assert out.count("#include <stdexcept>") == 1


def test_cpp_region_in_function_returning_a_value_compiles():
    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    src = _cpp("""\
        #include <cstdint>
        int64_t scaled(int64_t acc, int32_t m, int shift) {
          <B>
          return (acc * m + (int64_t(1) << (shift - 1))) >> shift;
          <E>
        }
        int main() {
          try { scaled(1, 2, 3); } catch (const std::runtime_error& e) { return 0; }
          return 1;
        }
        """)
    out = strip_source(src, "cpp")
    tmp = Path(__file__).resolve().parent / "_strip_tmp"
    tmp.mkdir(exist_ok=True)
    try:
        (tmp / "t.cc").write_text(out)
        subprocess.run([cxx, "-std=c++17", "-Wall", "-Werror", "-o", str(tmp / "t"),
                        str(tmp / "t.cc")], check=True, capture_output=True)
        assert subprocess.run([str(tmp / "t")]).returncode == 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_cuda_device_function_gets_trap_host_function_gets_throw():
    src = _cpp("""\
        template <typename T>
        __global__ void add_kernel(const T* a, T* out, int n) {
          int i = blockIdx.x * blockDim.x + threadIdx.x;
          <B>
          if (i < n) out[i] = a[i] + 1;
          <E>
        }
        void launch(const float* a, float* out, int n) {
          <B>
          add_kernel<<<(n + 255) / 256, 256>>>(a, out, n);
          <E>
        }
        """)
    out = strip_source(src, "cpp")
    assert "__trap();  // not implemented: add_kernel" in out
    assert 'throw std::runtime_error("not implemented: launch");' in out
    assert "a[i] + 1" not in out and "<<<" not in out


def test_cuda_host_device_region_traps_on_the_device_and_throws_on_the_host():
    src = _cpp("""\
        #include <cstdint>
        template <typename T>
        __host__ __device__ inline void tile(const T* a, int (&acc)[4]) {
          <B>
          for (int i = 0; i < 4; ++i) acc[i] += a[i];
          <E>
        }
        __device__ int twice(int x) {
          <B>
          return 2 * x;
          <E>
        }
        """)
    out = strip_source(src, "cpp", "q.cuh")
    assert ("#ifdef __CUDA_ARCH__\n  __trap();  // not implemented: tile\n#else\n"
            '  throw std::runtime_error("not implemented: tile");\n#endif\n') in out
    assert "__trap();  // not implemented: twice" in out
    assert "#include <stdexcept>" in out and "acc[i] += a[i]" not in out
    assert enclosing_cpp_function_kind(out[:out.index("#ifdef")]) == ("tile", "host_device")
    assert enclosing_cpp_function("__device__ int twice(int x) {\n") == ("twice", True)


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_cuda_host_device_stub_compiles_and_throws_on_the_host(tmp_path):
    # The host pass of nvcc sees the #else branch; plain g++ with the CUDA qualifiers defined
    # away compiles exactly that branch.
    src = _cpp("""\
        #include <cstdio>
        #define __host__
        #define __device__
        __host__ __device__ inline int tile(int x) {
          <B>
          return x + 1;
          <E>
        }
        int main() {
          try { tile(1); } catch (const std::runtime_error& e) { std::puts(e.what()); return 0; }
          return 1;
        }
        """)
    (tmp_path / "t.cc").write_text(strip_source(src, "cpp", "t.cc"))
    subprocess.run(["g++", "-std=c++17", "-o", str(tmp_path / "t"), str(tmp_path / "t.cc")],
                   check=True, capture_output=True)
    res = subprocess.run([str(tmp_path / "t")], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "not implemented: tile"


def test_cpp_region_outside_any_function_is_an_error():
    src = _cpp("""\
        namespace x {
        <B>
        int table[3] = {1, 2, 3};
        <E>
        }
        """)
    with pytest.raises(StripError, match="not inside a function"):
        strip_source(src, "cpp", "k.cc")


def test_cpp_markers_in_strings_and_comments_do_not_confuse_brace_matching():
    text = 'void f() {\n  const char* s = "}{";\n  /* } */\n  // }\n'
    assert enclosing_cpp_function(text) == ("f", False)


def test_find_regions_reports_bodies():
    regions = find_regions(_py("""\
        def f():
            <B>
            x = 1
            return x
            <E>
        """), "python")
    assert [(r.kind, r.begin, r.end) for r in regions] == [("SOLUTION", 2, 5)]
    assert [line.strip() for line in regions[0].body] == ["x = 1", "return x"]


# ---- notebook sources (graders/nbbuild.py) ----------------------------------------------------

from graders.nbbuild import NotebookSourceError, build_notebook  # noqa: E402

NB_SRC = """{"title": "t", "library_files": ["needle/quant/reference.py"]}
#%% markdown
# Title
#%% readonly id=setup
import numpy as np
#%% solution id=impl_f
def f(x):
    ### BEGIN SOLUTION
    return 2 * x
    ### END SOLUTION
#%% tests id=test_f points=2
assert f(2) == 4
#%% answer id=why points=1
Because.
"""


def test_nbbuild_sets_nbgrader_metadata():
    nb = build_notebook(NB_SRC)
    assert nb.metadata["needle_quant"]["library_files"] == ["needle/quant/reference.py"]
    kinds = [(c.cell_type, c.metadata.get("nbgrader")) for c in nb.cells]
    assert kinds[0] == ("markdown", None)
    setup, sol, test, answer = (k[1] for k in kinds[1:])
    assert setup["locked"] and not setup["grade"] and not setup["solution"]
    assert sol["solution"] and not sol["grade"] and sol["grade_id"] == "impl_f"
    assert test["grade"] and test["locked"] and test["points"] == 2.0
    assert kinds[4][0] == "markdown" and answer["grade"] and answer["solution"]
    assert all(c.metadata["nbgrader"]["schema_version"] == 3 for c in nb.cells[1:])


@pytest.mark.parametrize("src, message", [
    ("#%% tests points=1\nassert True\n", "needs id"),
    ("#%% tests id=t\nassert True\n", "needs points"),
    ("#%% readonly id=a\nx = 1\n#%% readonly id=a\ny = 2\n", "duplicate cell id"),
    ("#%% weird\nx = 1\n", "bad cell header"),
])
def test_nbbuild_rejects_bad_sources(src, message):
    with pytest.raises(NotebookSourceError, match=message):
        build_notebook(src, "x.nbsrc")


# ---- the course manifest (course/manifest.py) -------------------------------------------------

from graders import course as course_mod  # noqa: E402
from graders.strip import enclosing_python_function  # noqa: E402


def test_manifest_matches_every_solution_region():
    assert course_mod.check_manifest() == []


def test_every_region_has_an_exercise_and_every_exercise_a_test(monkeypatch):
    M = course_mod.course_manifest()
    nbs = json.loads(json.dumps(M.NOTEBOOKS))
    nb3 = next(n for n in nbs if n["id"] == "03_quant_basics")
    dropped = nb3["exercises"].pop(0)                               # choose_qparams
    nb3["exercises"][0]["tests"] = []                               # quantize: no visible test
    nb3["exercises"][1]["pytest"] = ["tests/test_quant_reference.py::test_no_such_test"]
    monkeypatch.setattr(M, "NOTEBOOKS", nbs)
    errors = "\n".join(course_mod.check_manifest())
    assert "needle/quant/reference.py:choose_qparams belongs to no exercise" in errors
    assert "exercise 3.2 quantize: no visible test cell" in errors
    assert "no library test matches 'tests/test_quant_reference.py::test_no_such_test'" in errors
    assert dropped["name"] == "choose_qparams"


def test_manifest_rejects_stale_entries_and_uses_of_later_files(monkeypatch):
    M = course_mod.course_manifest()
    nbs = json.loads(json.dumps(M.NOTEBOOKS))
    nbs[2]["exercises"].append({"id": "2.2", "name": "gone", "where": "needle/quant/fuse.py:gone",
                                "title": "t", "tests": ["test_fold_bn"], "pytest": []})
    nbs[4]["uses"].append("needle/quant/modules.py")                 # 04 uses 07's file
    nbs[5]["exercises"][0]["tests"].append("test_not_a_cell")
    monkeypatch.setattr(M, "NOTEBOOKS", nbs)
    errors = "\n".join(course_mod.check_manifest())
    assert "exercise 2.2 gone: no solution region at needle/quant/fuse.py:gone" in errors
    assert "04_calibration uses needle/quant/modules.py, which holds only exercises of later" \
        in errors
    assert "'test_not_a_cell' is not a test cell of 05_int8_cpu_kernel" in errors


def test_submission_files_carry_own_and_used_earlier_exercise_files():
    M = course_mod.course_manifest()
    assert M.submission_files("03") == ["needle/quant/reference.py"]
    assert M.submission_files("04") == ["needle/quant/fuse.py", "needle/quant/observers.py",
                                        "needle/quant/reference.py"]
    assert M.submission_files("07_end_to_end") == [
        "needle/quant/convert.py", "needle/quant/fuse.py", "needle/quant/modules.py",
        "needle/quant/observers.py", "needle/quant/reference.py"]
    assert M.submission_files("00") == []
    assert M.submission_files("09") == ["needle/quant/reference.py"]
    with pytest.raises(KeyError, match="no notebook '10'"):
        M.notebook("10")


def test_python_stub_message_names_the_exercise():
    src = _py("""\
        class QuantStub:
            def forward(self, x):
                <B>
                return x
                <E>
        """)
    out = strip_source(src, "python", "m.py", message_for=lambda f: f"{f}: exercise 7.2 of nb")
    assert 'raise NotImplementedError("QuantStub.forward: exercise 7.2 of nb")' in out
    ns = {}
    exec(compile(out, "<stripped>", "exec"), ns)
    with pytest.raises(NotImplementedError, match=r"^QuantStub.forward: exercise 7.2 of nb$"):
        ns["QuantStub"]().forward(1)
    assert enclosing_python_function(src, 3) == "QuantStub.forward"


def test_cpp_stub_message_is_the_same_text():
    src = _cpp("""\
        int f(int x) {
          <B>
          return x;
          <E>
        }
        """)
    out = strip_source(src, "cpp", "k.cc", message_for=lambda f: f'{f}: exercise 5.3 "q"')
    assert 'throw std::runtime_error("f: exercise 5.3 \\"q\\"");' in out


# ---- the grading policy (graders/workspace.py) ------------------------------------------------

from graders import workspace as workspace_mod  # noqa: E402
from graders.workspace import grading_files, splice_functions  # noqa: E402


def test_splice_replaces_only_the_named_functions():
    student = "import numpy\n\ndef a():\n    raise NotImplementedError('a')\n\n" \
              "class C:\n    @staticmethod\n    def f():\n        return 0\n\ndef mine():\n    return 1\n"
    reference = "import numpy\n\ndef a():\n    return 42\n\nclass C:\n    @staticmethod\n" \
                "    def f():\n        return 7\n"
    text, notes = splice_functions(student, reference, ["a", "C.f"])
    ns = {}
    exec(text, ns)
    assert (ns["a"](), ns["C"].f(), ns["mine"]()) == (42, 7, 1) and notes == []
    text, notes = splice_functions("def a(:\n", reference, ["a"], "x.py")
    assert text == "def a(:\n" and "x.py does not parse" in notes[0]
    _, notes = splice_functions("def b():\n    pass\n", reference, ["a"], "x.py")
    assert "a is missing from your file" in notes[0]


def test_grading_files_policy(tmp_path):
    """05: the student's qgemm_reference, the course's choose_qparams (03), stubs for 07."""
    repo = course_mod.REPO
    release, sub = tmp_path / "release", tmp_path / "sub"
    rel = "needle/quant/reference.py"
    messages = {f"{rel}:{n}": f"{n}: stub" for n in ("choose_qparams", "qgemm_reference",
                                                      "quantized_add", "quantize", "dequantize",
                                                      "quantize_bias", "quantize_multiplier",
                                                      "requantize")}
    for f in course_mod.course_manifest().exercise_files():
        text = (repo / f).read_text()
        (release / f).parent.mkdir(parents=True, exist_ok=True)
        (release / f).write_text(strip_source(text, "python" if f.endswith(".py") else "cpp", f,
                                              message_for=lambda fn, f=f: messages.get(f"{f}:{fn}")))
    (sub / rel).parent.mkdir(parents=True)
    mine = (release / rel).read_text().replace('raise NotImplementedError("qgemm_reference: stub")',
                                               "return 'student'")
    (sub / rel).write_text(mine)
    files, report = grading_files("05_int8_cpu_kernel", release, repo, sub)
    text = files[rel].decode()
    assert "return 'student'" in text                             # 5.1: the student's
    assert "choose_qparams: stub" not in text                      # 3.x: the course's
    assert "quantized_add: stub" in text                           # 7.6: still a stub
    assert report["from_student"] == [rel] and report["missing"] == ["src/cpu/qgemm_scalar.cc"]
    assert files["src/cpu/qgemm_scalar.cc"] == (release / "src/cpu/qgemm_scalar.cc").read_bytes()
    assert files["needle/quant/fuse.py"] == (repo / "needle/quant/fuse.py").read_bytes()
    files, report = grading_files("05_int8_cpu_kernel", release, repo, tmp_path / "empty")
    assert report["missing"] == [rel, "src/cpu/qgemm_scalar.cc"]
    assert "5.1 qgemm_reference" in report["missing_exercises"]
    assert "5.2 qgemm_scalar_tile" in report["missing_exercises"]
    # a submission whose needle/ folder is a link (to the instructor's copy, say) has none of
    # the student's files: the link is not followed, whichever component it is
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "needle").symlink_to(repo / "needle")
    files, report = grading_files("05_int8_cpu_kernel", release, repo, linked)
    assert report["missing"] == [rel, "src/cpu/qgemm_scalar.cc"] and \
        files[rel] != (repo / rel).read_bytes()
    assert "5.1 qgemm_reference" in workspace_mod.unwritten_exercises("05_int8_cpu_kernel",
                                                                      linked)


def test_submit_archive_round_trips_through_unpack(tmp_path, monkeypatch):
    """The student tool's archive unpacks into the grader's layout; tampering is named."""
    from course import tools
    import zipfile
    root = tmp_path / "repo"
    for rel in ["notebooks/03_quant_basics.ipynb", "needle/quant/reference.py"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes((course_mod.REPO / rel).read_bytes())
    archive = tools.submit(root, "03", tmp_path / "out")
    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == ["03_quant_basics/03_quant_basics.ipynb",
                                        "03_quant_basics/SHA256SUMS",
                                        "03_quant_basics/needle/quant/reference.py"]
    dest, problems = course_mod.unpack_submission(archive, tmp_path / "submitted", "alice")
    assert dest == tmp_path / "submitted" / "alice" / "03_quant_basics" and problems == []
    assert (dest / "needle/quant/reference.py").read_bytes() == \
        (root / "needle/quant/reference.py").read_bytes()
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive) as z, zipfile.ZipFile(bad, "w") as out:
        for n in z.namelist():
            data = z.read(n)
            out.writestr(n, data + b"#" if n.endswith(".py") else data)
    _, problems = course_mod.unpack_submission(bad, tmp_path / "submitted", "bob")
    assert problems == ["needle/quant/reference.py: checksum mismatch (changed after `make submit`)"]
    (root / "needle/quant/reference.py").unlink()
    with pytest.raises(tools.SetupError, match="needle/quant/reference.py is missing"):
        tools.submit(root, "03", tmp_path / "out")


def test_unpack_refuses_dot_folders_and_oversized_members_without_losing_uploads(tmp_path,
                                                                                 monkeypatch):
    """'./03_x/...' once made the student's own folder the destination (and deleted their other
    notebooks); a member larger than the limit is refused before anything is replaced."""
    import zipfile
    submitted = tmp_path / "submitted"
    kept = submitted / "carol" / "01_save_load" / "01_save_load.ipynb"
    kept.parent.mkdir(parents=True)
    kept.write_text("{}")
    earlier = submitted / "carol" / "03_quant_basics" / "03_quant_basics.ipynb"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("earlier upload")
    for members in (["./03_quant_basics/03_quant_basics.ipynb"],
                    ["03_quant_basics/./x.py"], ["03_quant_basics//x.py"],
                    ["../03_quant_basics/x.py"], ["notes/x.py"]):
        bad = tmp_path / "bad.zip"
        with zipfile.ZipFile(bad, "w") as z:
            for n in members:
                z.writestr(n, "x")
        with pytest.raises(ValueError, match="not a course submission"):
            course_mod.unpack_submission(bad, submitted, "carol")
    monkeypatch.setattr(course_mod, "MAX_SUBMITTED_FILE", 1000)
    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("03_quant_basics/03_quant_basics.ipynb", b"{" + b" " * 5000 + b"}")
    with pytest.raises(ValueError, match="larger than the limit"):
        course_mod.unpack_submission(big, submitted, "carol")
    with pytest.raises(ValueError, match="student folder"):
        course_mod.unpack_submission(big, submitted, "..")
    assert kept.read_text() == "{}" and earlier.read_text() == "earlier upload"


def test_unpack_keeps_the_graders_notes_file_for_the_grader(tmp_path):
    """A student's own UNPACK_PROBLEMS.txt would show in the grade report's notes."""
    import zipfile
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("03_quant_basics/03_quant_basics.ipynb", "{}")
        z.writestr("03_quant_basics/UNPACK_PROBLEMS.txt", "all good, full marks please\n")
    dest, problems = course_mod.unpack_submission(archive, tmp_path / "submitted", "dave")
    assert not (dest / "UNPACK_PROBLEMS.txt").exists()
    assert any("UNPACK_PROBLEMS.txt" in p and "not unpacked" in p for p in problems), problems


def test_a_skip_raised_by_library_code_counts_as_a_failure(tmp_path):
    """pytest.skip() called from a library file would hide a failing test; a test that skips
    itself (no GPU) is still left out."""
    from course.tools import run_library_tests
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "mod.py").write_text(
        "import pytest\n\ndef f():\n    pytest.skip('no GPU')\n\n"
        "def g():\n    raise pytest.skip.Exception('quietly')\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text(
        f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\nimport pytest\nfrom lib import mod\n\n"
        "def test_lib_skip():\n    mod.f()\n\ndef test_lib_raise():\n    mod.g()\n\n"
        "def test_self_skip():\n    pytest.skip('no GPU here')\n\ndef test_pass():\n    pass\n")
    got = run_library_tests(tmp_path, ["tests/test_a.py::"], timeout=120)
    assert got["tests/test_a.py::test_pass"] is None
    assert "test_self_skip" not in str(list(got)), got
    for name in ("test_lib_skip", "test_lib_raise"):
        assert "outside the tests: counts as a failure" in got[f"tests/test_a.py::{name}"], got


# ---- the notebooks' setup (course/bootstrap.py) -----------------------------------------------

from course import bootstrap  # noqa: E402


def test_find_root_from_a_notebook_folder_and_from_needle_root(tmp_path, monkeypatch):
    root = tmp_path / "copy"
    (root / "course").mkdir(parents=True)
    (root / "course" / "manifest.py").write_text("")
    (root / "needle").mkdir()
    (root / "notebooks").mkdir()
    monkeypatch.delenv("NEEDLE_ROOT", raising=False)
    assert bootstrap.find_root(root / "notebooks") == root.resolve()
    with pytest.raises(bootstrap.SetupError, match="no course repository at or above"):
        bootstrap.find_root(tmp_path)
    monkeypatch.setenv("NEEDLE_ROOT", str(tmp_path))
    with pytest.raises(bootstrap.SetupError, match="holds no needle/ folder"):
        bootstrap.find_root()


def test_requirements_and_build_stamp(tmp_path, monkeypatch):
    (tmp_path / "requirements.txt").write_text("numpy>=1.24  # arrays\n-r other.txt\n"
                                               "no-such-package-xyz>=1\n")
    assert bootstrap.requirements(tmp_path) == ["numpy>=1.24", "no-such-package-xyz>=1"]
    assert bootstrap.missing_requirements(tmp_path) == ["no-such-package-xyz>=1"]
    # modules built by other means (no stamp) are used as they are: nothing is built
    (tmp_path / "CMakeLists.txt").write_text("")
    lib = tmp_path / "needle" / "backend_ndarray"
    lib.mkdir(parents=True)
    (lib / "ndarray_backend_cpu.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    monkeypatch.delenv("NEEDLE_SETUP_BUILD", raising=False)
    assert bootstrap.ensure_built(tmp_path) is False
    # with a stamp, a changed native source means a rebuild; NEEDLE_SETUP_BUILD=0 skips it
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "needle-build.stamp").write_text("stale")
    monkeypatch.setenv("NEEDLE_SETUP_BUILD", "0")
    assert bootstrap.ensure_built(tmp_path) is False


def test_setup_cell_is_the_same_first_code_cell_everywhere():
    import nbformat
    from graders.nbbuild import setup_cell_source
    want = setup_cell_source()
    M = course_mod.course_manifest()
    assert M.COURSE["repo_url"] in want and "NEEDLE_COURSE_REPO" in want
    for path in sorted((course_mod.NOTEBOOKS).glob("*.ipynb")):
        code = [c for c in nbformat.read(str(path), as_version=4).cells if c.cell_type == "code"]
        assert code[0].source == want, path.name
        assert code[0].metadata["nbgrader"]["grade_id"] == "course_setup"
        assert code[0].metadata["nbgrader"]["locked"]


def test_an_exercise_of_two_functions_stubs_and_checks_both(tmp_path):
    """3.2 is quantize + dequantize: each stub names its own function and the exercise, and the
    exercise counts as unwritten while either stub is left."""
    from graders.release import stub_messages
    from graders.workspace import unwritten_exercises
    M = course_mod.course_manifest()
    ex = next(e for _, e in M.exercises("03") if e["id"] == "3.2")
    assert M.functions(ex) == ["quantize", "dequantize"]
    msgs = stub_messages()
    ref = "needle/quant/reference.py"
    assert msgs[(None, f"{ref}:quantize")] == "quantize: exercise 3.2 of notebook 03_quant_basics"
    assert msgs[(None, f"{ref}:dequantize")] == \
        "dequantize: exercise 3.2 of notebook 03_quant_basics"
    assert course_mod.check_manifest() == []
    sub = tmp_path / "needle" / "quant"
    sub.mkdir(parents=True)
    (tmp_path / "03_quant_basics.ipynb").write_text("{}")
    for left, want in (("dequantize", True), ("quantize", True), (None, False)):
        body = "def dequantize(q):\n    return q\n"
        if left:
            body += f'raise NotImplementedError("{M.stub_message("03_quant_basics", ex, left)}")\n'
        (sub / "reference.py").write_text(body)
        got = unwritten_exercises("03_quant_basics", tmp_path)
        assert ("3.2 quantize + dequantize" in got) is want, (left, got)
