"""Unit tests of the solution stripper (graders/strip.py) on small synthetic sources."""
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
