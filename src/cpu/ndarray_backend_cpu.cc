// Python bindings of the CPU backend: module ndarray_backend_cpu (docs/ARCHITECTURE.md,
// "Backend module interface"). Every entry point validates dtypes, sizes and views before it
// touches memory and throws std::invalid_argument (Python ValueError) naming the bad values;
// the kernels themselves live in strided.cc, ewise.cc, gemm_f32.cc and the int8 files.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "../common/checked_size.h"
#include "array.h"
#include "ewise.h"
#include "gemm_f32.h"
#include "parallel.h"
#include "quant_ops.h"
#include "int4_gemv.h"
#include "strided.h"

namespace py = pybind11;
using needle::cpu::AlignedArray;
using needle::cpu::DType;

namespace needle {
namespace cpu {
namespace {

// Kernels touching at least this many elements run without the GIL.
constexpr int64_t kReleaseGilElements = int64_t(1) << 16;

struct MaybeReleaseGil {
  explicit MaybeReleaseGil(int64_t work) {
    if (work >= kReleaseGilElements) release.emplace();
  }
  std::optional<py::gil_scoped_release> release;
};

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument(msg); }

int64_t isize(const AlignedArray& a) { return static_cast<int64_t>(a.size()); }

StridedView make_view(const std::vector<int64_t>& shape, const std::vector<int64_t>& strides,
                      int64_t offset, const AlignedArray& buffer, const char* what) {
  StridedView v{shape, strides, offset};
  check_view(v, isize(buffer), what);
  return v;
}

void same_dtype(const AlignedArray& a, const AlignedArray& out, const char* what) {
  if (a.dtype() != out.dtype())
    throw DTypeError(std::string(what) + ": dtype " + dtype_name(a.dtype()) + " does not match out dtype " +
         dtype_name(out.dtype()));
}

void need_float(const char* what, std::initializer_list<const AlignedArray*> arrays) {
  for (const AlignedArray* a : arrays)
    if (a->dtype() != DType::kFloat32)
      throw py::type_error(std::string(what) + " needs float32, got " + dtype_name(a->dtype()));
}

void same_size(const char* what, const AlignedArray& out,
               std::initializer_list<const AlignedArray*> arrays) {
  for (const AlignedArray* a : arrays)
    if (a->size() != out.size())
      fail(std::string(what) + ": input size " + std::to_string(a->size()) + " != output size " +
           std::to_string(out.size()));
}

// A scalar for an integer dtype must be a finite integer inside the dtype's range.
template <typename T>
T scalar_as(double value, const char* what) {
  if constexpr (std::is_same<T, float>::value) {
    return static_cast<float>(value);
  } else {
    const double lo = static_cast<double>(std::numeric_limits<T>::min());
    const double hi = static_cast<double>(std::numeric_limits<T>::max());
    if (!(value >= lo && value <= hi) || value != std::floor(value))
      fail(std::string(what) + ": value " + std::to_string(value) + " is not an integer in [" +
           std::to_string(static_cast<int64_t>(lo)) + ", " + std::to_string(static_cast<int64_t>(hi)) + "]");
    return static_cast<T>(value);
  }
}

std::string numpy_dtype_name(const py::array& a) {
  return py::str(a.dtype().attr("name")).cast<std::string>();
}

// ---- the module functions -------------------------------------------------------------------

py::array to_numpy(const AlignedArray& a, const std::vector<int64_t>& shape,
                   const std::vector<int64_t>& strides, int64_t offset) {
  StridedView v = make_view(shape, strides, offset, a, "to_numpy");
  std::vector<py::ssize_t> np_shape(shape.begin(), shape.end());
  py::array result(py::dtype(dtype_name(a.dtype())), np_shape);
  void* dst = result.mutable_data();
  dispatch_dtype(const_cast<AlignedArray&>(a), [&](auto* p) {
    using T = std::remove_pointer_t<decltype(p)>;
    MaybeReleaseGil nogil(v.size());
    strided_gather<T>(p, v, static_cast<T*>(dst));
  });
  return result;
}

void from_numpy(const py::array& src, AlignedArray& out) {
  const std::string name = numpy_dtype_name(src);
  if (name != dtype_name(out.dtype()))
    throw py::type_error("from_numpy: numpy dtype " + name + " does not match Array dtype " +
                         dtype_name(out.dtype()));
  // A byte-swapped array ('>i4') has the same dtype name; copying its bytes would be wrong.
  const char order = src.dtype().byteorder();
  if (order == '>' || (order != '=' && order != '|' && order != '<'))
    throw py::type_error("from_numpy: numpy array is not in native byte order; convert it with "
                         ".astype('" + name + "') first");
  if (static_cast<size_t>(src.size()) != out.size())
    fail("from_numpy: numpy array has " + std::to_string(src.size()) + " elements, Array has " +
         std::to_string(out.size()));
  py::array c = py::array::ensure(src, py::array::c_style);
  if (!c) fail("from_numpy: cannot make the numpy array contiguous");
  std::memcpy(out.raw(), c.data(), out.nbytes());
}

void fill(AlignedArray& out, double value) {
  dispatch_dtype(out, [&](auto* p) {
    using T = std::remove_pointer_t<decltype(p)>;
    const T v = scalar_as<T>(value, "fill");
    MaybeReleaseGil nogil(isize(out));
    std::fill(p, p + out.size(), v);
  });
}

void compact(const AlignedArray& a, AlignedArray& out, const std::vector<int64_t>& shape,
             const std::vector<int64_t>& strides, int64_t offset) {
  same_dtype(a, out, "compact");
  StridedView v = make_view(shape, strides, offset, a, "compact");
  if (v.size() != isize(out))
    fail("compact: view has " + std::to_string(v.size()) + " elements, out has " + std::to_string(out.size()));
  dispatch_dtype(out, [&](auto* p) {
    using T = std::remove_pointer_t<decltype(p)>;
    MaybeReleaseGil nogil(v.size());
    strided_gather<T>(static_cast<const T*>(a.raw()), v, p);
  });
}

void ewise_setitem(const AlignedArray& a, AlignedArray& out, const std::vector<int64_t>& shape,
                   const std::vector<int64_t>& strides, int64_t offset) {
  same_dtype(a, out, "ewise_setitem");
  StridedView v = make_view(shape, strides, offset, out, "ewise_setitem");
  if (v.size() != isize(a))
    fail("ewise_setitem: view has " + std::to_string(v.size()) + " elements, input has " + std::to_string(a.size()));
  dispatch_dtype(out, [&](auto* p) {
    using T = std::remove_pointer_t<decltype(p)>;
    MaybeReleaseGil nogil(v.size());
    strided_scatter<T>(static_cast<const T*>(a.raw()), v, p);
  });
}

void scalar_setitem(int64_t size, double value, AlignedArray& out, const std::vector<int64_t>& shape,
                    const std::vector<int64_t>& strides, int64_t offset) {
  StridedView v = make_view(shape, strides, offset, out, "scalar_setitem");
  if (v.size() != size)
    fail("scalar_setitem: view has " + std::to_string(v.size()) + " elements, size is " + std::to_string(size));
  dispatch_dtype(out, [&](auto* p) {
    using T = std::remove_pointer_t<decltype(p)>;
    const T val = scalar_as<T>(value, "scalar_setitem");
    MaybeReleaseGil nogil(v.size());
    strided_fill<T>(val, v, p);
  });
}

void astype(const AlignedArray& a, AlignedArray& out) {
  same_size("astype", out, {&a});
  MaybeReleaseGil nogil(isize(a));
  convert(a.raw(), a.dtype(), out.raw(), out.dtype(), isize(a));
}

void bind_binary(py::module_& m, const char* name, BinaryOp op) {
  const std::string ewise = std::string("ewise_") + name, scalar = std::string("scalar_") + name;
  if (op != BinaryOp::kPower)
    m.def(ewise.c_str(), [op, ewise](const AlignedArray& a, const AlignedArray& b, AlignedArray& out) {
      need_float(ewise.c_str(), {&a, &b, &out});
      same_size(ewise.c_str(), out, {&a, &b});
      MaybeReleaseGil nogil(isize(out));
      ewise_binary(op, static_cast<const float*>(a.raw()), static_cast<const float*>(b.raw()),
                   static_cast<float*>(out.raw()), isize(out));
    }, py::arg("a"), py::arg("b"), py::arg("out"));
  m.def(scalar.c_str(), [op, scalar](const AlignedArray& a, float val, AlignedArray& out) {
    need_float(scalar.c_str(), {&a, &out});
    same_size(scalar.c_str(), out, {&a});
    MaybeReleaseGil nogil(isize(out));
    scalar_binary(op, static_cast<const float*>(a.raw()), val, static_cast<float*>(out.raw()), isize(out));
  }, py::arg("a"), py::arg("val"), py::arg("out"));
}

void bind_unary(py::module_& m, const char* name, UnaryOp op) {
  const std::string fname = std::string("ewise_") + name;
  m.def(fname.c_str(), [op, fname](const AlignedArray& a, AlignedArray& out) {
    need_float(fname.c_str(), {&a, &out});
    same_size(fname.c_str(), out, {&a});
    MaybeReleaseGil nogil(isize(out));
    ewise_unary(op, static_cast<const float*>(a.raw()), static_cast<float*>(out.raw()), isize(out));
  }, py::arg("a"), py::arg("out"));
}

template <void (*Kernel)(const float*, float*, int64_t, int64_t)>
void reduce(const char* what, const AlignedArray& a, AlignedArray& out, int64_t reduce_size) {
  need_float(what, {&a, &out});
  if (reduce_size <= 0 || isize(a) != checked_mul(isize(out), reduce_size, what))
    fail(std::string(what) + ": input size " + std::to_string(a.size()) + " != out size " +
         std::to_string(out.size()) + " * reduce_size " + std::to_string(reduce_size));
  MaybeReleaseGil nogil(isize(a));
  Kernel(static_cast<const float*>(a.raw()), static_cast<float*>(out.raw()), isize(out), reduce_size);
}

void matmul(const AlignedArray& a, const AlignedArray& b, AlignedArray& out, int64_t m, int64_t n,
            int64_t p) {
  need_float("matmul", {&a, &b, &out});
  if (m < 0 || n < 0 || p < 0 || isize(a) != checked_mul(m, n, "matmul") ||
      isize(b) != checked_mul(n, p, "matmul") || isize(out) != checked_mul(m, p, "matmul"))
    fail("matmul: sizes a=" + std::to_string(a.size()) + " b=" + std::to_string(b.size()) + " out=" +
         std::to_string(out.size()) + " do not fit m=" + std::to_string(m) + " n=" + std::to_string(n) +
         " p=" + std::to_string(p));
  py::gil_scoped_release nogil;
  if (n == 0) {
    std::fill(static_cast<float*>(out.raw()), static_cast<float*>(out.raw()) + out.size(), 0.0f);
    return;
  }
  if (m == 0 || p == 0) return;
  gemm_f32(static_cast<const float*>(a.raw()), static_cast<const float*>(b.raw()),
           static_cast<float*>(out.raw()), m, p, n);
}

// The course's tiled layout: a matrix of rows x cols stored as [rows/T][cols/T][T][T] blocks.
constexpr int64_t kTile = 8;

void untile(const float* tiled, float* rowmajor, int64_t rows, int64_t cols) {
  const int64_t tc = cols / kTile;
  for (int64_t bi = 0; bi < rows / kTile; ++bi)
    for (int64_t bj = 0; bj < tc; ++bj) {
      const float* blk = tiled + (bi * tc + bj) * kTile * kTile;
      for (int64_t i = 0; i < kTile; ++i)
        std::memcpy(rowmajor + (bi * kTile + i) * cols + bj * kTile, blk + i * kTile, kTile * sizeof(float));
    }
}

void retile(const float* rowmajor, float* tiled, int64_t rows, int64_t cols) {
  const int64_t tc = cols / kTile;
  for (int64_t bi = 0; bi < rows / kTile; ++bi)
    for (int64_t bj = 0; bj < tc; ++bj) {
      float* blk = tiled + (bi * tc + bj) * kTile * kTile;
      for (int64_t i = 0; i < kTile; ++i)
        std::memcpy(blk + i * kTile, rowmajor + (bi * kTile + i) * cols + bj * kTile, kTile * sizeof(float));
    }
}

// out = a @ b on tiled operands (m, n, p in elements, each a multiple of the tile size): the
// blocks are gathered into row-major scratch so the one tuned float32 GEMM does the work.
void matmul_tiled(const AlignedArray& a, const AlignedArray& b, AlignedArray& out, int64_t m, int64_t n,
                  int64_t p) {
  need_float("matmul_tiled", {&a, &b, &out});
  if (m < 0 || n < 0 || p < 0 || m % kTile || n % kTile || p % kTile)
    fail("matmul_tiled: m=" + std::to_string(m) + " n=" + std::to_string(n) + " p=" + std::to_string(p) +
         " must be non-negative multiples of the tile size " + std::to_string(kTile));
  // checked: m * n of wrapping sizes could pass as 0 and the copies below overrun the buffers
  const int64_t mn = checked_mul(m, n, "matmul_tiled"), np_ = checked_mul(n, p, "matmul_tiled"),
                mp = checked_mul(m, p, "matmul_tiled");
  if (isize(a) != mn || isize(b) != np_ || isize(out) != mp)
    fail("matmul_tiled: sizes a=" + std::to_string(a.size()) + " b=" + std::to_string(b.size()) + " out=" +
         std::to_string(out.size()) + " do not fit m=" + std::to_string(m) + " n=" + std::to_string(n) +
         " p=" + std::to_string(p));
  py::gil_scoped_release nogil;
  float* c = static_cast<float*>(out.raw());
  if (m == 0 || p == 0) return;
  if (n == 0) {
    std::fill(c, c + out.size(), 0.0f);
    return;
  }
  std::vector<float> ra(static_cast<size_t>(mn)), rb(static_cast<size_t>(np_)), rc(static_cast<size_t>(mp));
  untile(static_cast<const float*>(a.raw()), ra.data(), m, n);
  untile(static_cast<const float*>(b.raw()), rb.data(), n, p);
  gemm_f32(ra.data(), rb.data(), rc.data(), m, p, n);
  retile(rc.data(), c, m, p);
}

}  // namespace
}  // namespace cpu
}  // namespace needle

PYBIND11_MODULE(ndarray_backend_cpu, m) {
  using namespace needle::cpu;
  m.doc() = "needle's CPU backend (C++): flat aligned buffers and the kernels NDArray calls.";
  m.attr("__device_name__") = "cpu";
  m.attr("__tile_size__") = kTile;
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const DTypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    }
  });

  py::class_<AlignedArray>(m, "Array", "A flat, 64-byte aligned buffer of size elements of dtype.")
      .def(py::init([](int64_t size, const std::string& dtype) {
             if (size < 0) fail("Array size must be >= 0, got " + std::to_string(size));
             return new AlignedArray(static_cast<size_t>(size), dtype_from_name(dtype));
           }),
           py::arg("size"), py::arg("dtype") = "float32")
      .def_property_readonly("size", &AlignedArray::size)
      .def_property_readonly("dtype", [](const AlignedArray& a) { return std::string(dtype_name(a.dtype())); })
      .def("ptr", &AlignedArray::ptr)
      .def("__repr__", [](const AlignedArray& a) {
        return "Array(size=" + std::to_string(a.size()) + ", dtype=" + dtype_name(a.dtype()) + ")";
      });

  m.def("to_numpy", &to_numpy, py::arg("a"), py::arg("shape"), py::arg("strides"), py::arg("offset"));
  m.def("from_numpy", &from_numpy, py::arg("a"), py::arg("out"));
  m.def("fill", &fill, py::arg("out"), py::arg("val"));
  m.def("compact", &compact, py::arg("a"), py::arg("out"), py::arg("shape"), py::arg("strides"), py::arg("offset"));
  m.def("ewise_setitem", &ewise_setitem, py::arg("a"), py::arg("out"), py::arg("shape"), py::arg("strides"),
        py::arg("offset"));
  m.def("scalar_setitem", &scalar_setitem, py::arg("size"), py::arg("val"), py::arg("out"), py::arg("shape"),
        py::arg("strides"), py::arg("offset"));
  m.def("astype", &astype, py::arg("a"), py::arg("out"));

  bind_binary(m, "add", BinaryOp::kAdd);
  bind_binary(m, "mul", BinaryOp::kMul);
  bind_binary(m, "div", BinaryOp::kDiv);
  bind_binary(m, "maximum", BinaryOp::kMaximum);
  bind_binary(m, "eq", BinaryOp::kEq);
  bind_binary(m, "ge", BinaryOp::kGe);
  bind_binary(m, "power", BinaryOp::kPower);  // scalar_power only
  bind_unary(m, "log", UnaryOp::kLog);
  bind_unary(m, "exp", UnaryOp::kExp);
  bind_unary(m, "tanh", UnaryOp::kTanh);

  m.def("reduce_max", [](const AlignedArray& a, AlignedArray& out, int64_t r) { reduce<reduce_max>("reduce_max", a, out, r); },
        py::arg("a"), py::arg("out"), py::arg("reduce_size"));
  m.def("reduce_sum", [](const AlignedArray& a, AlignedArray& out, int64_t r) { reduce<reduce_sum>("reduce_sum", a, out, r); },
        py::arg("a"), py::arg("out"), py::arg("reduce_size"));
  m.def("matmul", &matmul, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("m"), py::arg("n"), py::arg("p"));
  m.def("matmul_tiled", &matmul_tiled, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("m"), py::arg("n"),
        py::arg("p"), "out = a @ b on [rows/T][cols/T][T][T] tiled buffers, T = __tile_size__.");
  m.def("gemm_f32_isa", [] { return std::string(needle::cpu::gemm_f32_isa()); },
        "Instruction-set path the float32 matmul uses (honours NEEDLE_ISA).");

  m.def("set_num_threads", &needle::cpu::set_num_threads, py::arg("n"),
        "Threads used by the OpenMP loops of this backend (>= 1).");
  m.def("get_num_threads", &needle::cpu::num_threads);

  // The int8 kernels (qpack_weights, qgemm, ...) take Array arguments: register them after it.
  register_quant_ops(m);
  register_int4_ops(m);
}
