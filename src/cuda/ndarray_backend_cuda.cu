// The CUDA backend of needle: module `ndarray_backend_cuda` (interface: docs/ARCHITECTURE.md,
// "Backend module interface"). Kernels run on the default stream; every launch is checked and
// every copy to the host synchronises, so asynchronous faults surface as Python exceptions.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cuda_array.cuh"
#include "emulate.cuh"
#include "gemm_f32.cuh"
#include "quant_ops.cuh"

namespace py = pybind11;

namespace needle {
namespace cuda {

using Shape = std::vector<int64_t>;

// ---- fill, views, setitem ------------------------------------------------------------------

template <typename T>
__global__ void fill_kernel(T* out, T value, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    out[i] = value;
}

void fill(CudaArray& out, double value) {
  if (out.size == 0) return;
  dispatch_dtype(out.dtype, [&](auto tag) {
    using T = decltype(tag);
    fill_kernel<T><<<grid_for(out.size), kBlockSize>>>(out.data<T>(), convert_value<T>(value),
                                                       out.size);
    check_launch("fill_kernel");
  });
}

// out[i] = a[view(i)]: gathers a strided view into a compact buffer.
template <typename T>
__global__ void compact_kernel(const T* a, T* out, StridedView v, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    out[i] = a[view_index(v, int64_t(i))];
}

// out[view(i)] = a[i]: scatters a compact buffer into a strided view.
template <typename T>
__global__ void ewise_setitem_kernel(const T* a, T* out, StridedView v, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    out[view_index(v, int64_t(i))] = a[i];
}

template <typename T>
__global__ void scalar_setitem_kernel(T value, T* out, StridedView v, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    out[view_index(v, int64_t(i))] = value;
}

static void require_same_dtype(const CudaArray& a, const CudaArray& out, const char* op) {
  if (a.dtype != out.dtype) {
    throw DTypeError(std::string(op) + ": dtype mismatch, a is " + dtype_name(a.dtype) +
                     " and out is " + dtype_name(out.dtype));
  }
}

void compact(const CudaArray& a, CudaArray& out, const Shape& shape, const Shape& strides,
             int64_t offset) {
  require_same_dtype(a, out, "compact");
  size_t n = 0;
  StridedView v = make_view(shape, strides, offset, a.size, "compact", &n);
  require_size(out, n, "compact", "out");
  if (n == 0) return;
  dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    compact_kernel<T><<<grid_for(n), kBlockSize>>>(a.data<T>(), out.data<T>(), v, n);
    check_launch("compact_kernel");
  });
}

void ewise_setitem(const CudaArray& a, CudaArray& out, const Shape& shape, const Shape& strides,
                   int64_t offset) {
  require_same_dtype(a, out, "ewise_setitem");
  size_t n = 0;
  StridedView v = make_view(shape, strides, offset, out.size, "ewise_setitem", &n);
  require_size(a, n, "ewise_setitem", "a");
  if (n == 0) return;
  dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    ewise_setitem_kernel<T><<<grid_for(n), kBlockSize>>>(a.data<T>(), out.data<T>(), v, n);
    check_launch("ewise_setitem_kernel");
  });
}

void scalar_setitem(int64_t size, double value, CudaArray& out, const Shape& shape,
                    const Shape& strides, int64_t offset) {
  size_t n = 0;
  StridedView v = make_view(shape, strides, offset, out.size, "scalar_setitem", &n);
  if (size < 0 || static_cast<size_t>(size) != n) {
    throw std::invalid_argument("scalar_setitem: size " + std::to_string(size) +
                                " does not match the view's " + std::to_string(n) + " elements");
  }
  if (n == 0) return;
  dispatch_dtype(out.dtype, [&](auto tag) {
    using T = decltype(tag);
    scalar_setitem_kernel<T><<<grid_for(n), kBlockSize>>>(convert_value<T>(value),
                                                          out.data<T>(), v, n);
    check_launch("scalar_setitem_kernel");
  });
}

// ---- astype --------------------------------------------------------------------------------

template <typename Src, typename Dst>
__global__ void astype_kernel(const Src* a, Dst* out, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    out[i] = convert_value<Dst>(a[i]);
}

void astype(const CudaArray& a, CudaArray& out) {
  require_size(out, a.size, "astype", "out");
  if (a.size == 0) return;
  dispatch_dtype(a.dtype, [&](auto src_tag) {
    using Src = decltype(src_tag);
    dispatch_dtype(out.dtype, [&](auto dst_tag) {
      using Dst = decltype(dst_tag);
      astype_kernel<Src, Dst><<<grid_for(a.size), kBlockSize>>>(a.data<Src>(), out.data<Dst>(),
                                                                 a.size);
      check_launch("astype_kernel");
    });
  });
}

// ---- float32 elementwise and scalar ops ----------------------------------------------------

// Max that propagates NaN as numpy does (fmaxf would drop it).
__device__ __forceinline__ float max_nan(float x, float y) { return (x != x || x >= y) ? x : y; }

struct AddOp { __device__ float operator()(float x, float y) const { return x + y; } };
struct MulOp { __device__ float operator()(float x, float y) const { return x * y; } };
struct DivOp { __device__ float operator()(float x, float y) const { return x / y; } };
// numpy semantics: NaN in either operand gives NaN.
struct MaxOp { __device__ float operator()(float x, float y) const { return max_nan(x, y); } };
struct EqOp { __device__ float operator()(float x, float y) const { return x == y ? 1.0f : 0.0f; } };
struct GeOp { __device__ float operator()(float x, float y) const { return x >= y ? 1.0f : 0.0f; } };
struct PowOp { __device__ float operator()(float x, float y) const { return powf(x, y); } };
struct LogOp { __device__ float operator()(float x) const { return logf(x); } };
struct ExpOp { __device__ float operator()(float x) const { return expf(x); } };
struct TanhOp { __device__ float operator()(float x) const { return tanhf(x); } };

template <typename Op>
__global__ void ewise_binary_kernel(const float* a, const float* b, float* out, size_t n, Op op) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    out[i] = op(a[i], b[i]);
}

template <typename Op>
__global__ void scalar_binary_kernel(const float* a, float val, float* out, size_t n, Op op) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    out[i] = op(a[i], val);
}

template <typename Op>
__global__ void ewise_unary_kernel(const float* a, float* out, size_t n, Op op) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    out[i] = op(a[i]);
}

template <typename Op>
void ewise_binary(const CudaArray& a, const CudaArray& b, CudaArray& out, const char* name) {
  require_float32(a, name);
  require_float32(b, name);
  require_float32(out, name);
  require_size(b, a.size, name, "b");
  require_size(out, a.size, name, "out");
  if (a.size == 0) return;
  ewise_binary_kernel<<<grid_for(a.size), kBlockSize>>>(a.data<float>(), b.data<float>(),
                                                        out.data<float>(), a.size, Op{});
  check_launch(name);
}

template <typename Op>
void scalar_binary(const CudaArray& a, float val, CudaArray& out, const char* name) {
  require_float32(a, name);
  require_float32(out, name);
  require_size(out, a.size, name, "out");
  if (a.size == 0) return;
  scalar_binary_kernel<<<grid_for(a.size), kBlockSize>>>(a.data<float>(), val,
                                                         out.data<float>(), a.size, Op{});
  check_launch(name);
}

template <typename Op>
void ewise_unary(const CudaArray& a, CudaArray& out, const char* name) {
  require_float32(a, name);
  require_float32(out, name);
  require_size(out, a.size, name, "out");
  if (a.size == 0) return;
  ewise_unary_kernel<<<grid_for(a.size), kBlockSize>>>(a.data<float>(), out.data<float>(),
                                                       a.size, Op{});
  check_launch(name);
}

// ---- reductions over the last, contiguous axis ---------------------------------------------

// One warp per output row: lanes stride over the row, then combine with shuffles.
template <bool kMax>
__global__ void reduce_kernel(const float* a, float* out, size_t rows, size_t reduce_size) {
  const unsigned lane = threadIdx.x % 32;
  const size_t warps_per_grid = size_t(gridDim.x) * (blockDim.x / 32);
  for (size_t row = blockIdx.x * size_t(blockDim.x / 32) + threadIdx.x / 32; row < rows;
       row += warps_per_grid) {
    const float* p = a + row * reduce_size;
    float acc = kMax ? -INFINITY : 0.0f;
    for (size_t j = lane; j < reduce_size; j += 32) acc = kMax ? max_nan(acc, p[j]) : acc + p[j];
    for (int d = 16; d > 0; d /= 2) {
      const float other = __shfl_down_sync(0xffffffffu, acc, d);
      acc = kMax ? max_nan(acc, other) : acc + other;
    }
    if (lane == 0) out[row] = acc;
  }
}

template <bool kMax>
void reduce(const CudaArray& a, CudaArray& out, int64_t reduce_size, const char* name) {
  require_float32(a, name);
  require_float32(out, name);
  if (reduce_size < 1) {
    throw std::invalid_argument(std::string(name) + ": reduce_size must be >= 1, got " +
                                std::to_string(reduce_size));
  }
  require_size(a, size_t(checked_mul(int64_t(out.size), reduce_size, name)), name, "a");
  if (out.size == 0) return;
  const int warps_per_block = kBlockSize / 32;
  size_t blocks = (out.size + warps_per_block - 1) / warps_per_block;
  if (blocks > 65535u * 8u) blocks = 65535u * 8u;
  reduce_kernel<kMax><<<unsigned(blocks), kBlockSize>>>(a.data<float>(), out.data<float>(),
                                                        out.size, size_t(reduce_size));
  check_launch(name);
}

// ---- matmul --------------------------------------------------------------------------------

// Tiled SGEMM; the tile phases and their layout are documented in gemm_f32.cuh.
__global__ void __launch_bounds__(sgemm::kThreads)
matmul_kernel(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
              int64_t M, int64_t K, int64_t P) {
  using namespace sgemm;
  __shared__ float As[BK][BM + 1];  // transposed: As[k][row]
  __shared__ float Bs[BK][BN];
  const int tid = threadIdx.x;
  const int64_t row0 = int64_t(blockIdx.x) * BM, col0 = int64_t(blockIdx.y) * BN;
  float acc[TM][TN] = {};
  for (int64_t k0 = 0; k0 < K; k0 += BK) {
    load_tile(tid, A, B, M, K, P, row0, col0, k0, As, Bs);
    __syncthreads();
    compute_tile(tid, As, Bs, acc);
    __syncthreads();
  }
  store_tile(tid, C, M, P, row0, col0, acc);
}

void matmul(const CudaArray& a, const CudaArray& b, CudaArray& out, int64_t m, int64_t n,
            int64_t p) {
  require_float32(a, "matmul");
  require_float32(b, "matmul");
  require_float32(out, "matmul");
  if (m < 0 || n < 0 || p < 0) {
    throw std::invalid_argument("matmul: negative dimension in (m, n, p) = (" +
                                std::to_string(m) + ", " + std::to_string(n) + ", " +
                                std::to_string(p) + ")");
  }
  require_size(a, size_t(checked_mul(m, n, "matmul")), "matmul", "a");
  require_size(b, size_t(checked_mul(n, p, "matmul")), "matmul", "b");
  require_size(out, size_t(checked_mul(m, p, "matmul")), "matmul", "out");
  if (m == 0 || p == 0) return;
  size_t gx = (size_t(m) + sgemm::BM - 1) / sgemm::BM, gy = (size_t(p) + sgemm::BN - 1) / sgemm::BN;
  if (gx > 0x7fffffffu || gy > 65535u) {
    throw std::invalid_argument("matmul: output " + std::to_string(m) + "x" + std::to_string(p) +
                                " is too large for one launch");
  }
  matmul_kernel<<<dim3(unsigned(gx), unsigned(gy)), sgemm::kThreads>>>(
      a.data<float>(), b.data<float>(), out.data<float>(), m, n, p);
  check_launch("matmul_kernel");
}

// ---- host <-> device -----------------------------------------------------------------------

static bool is_compact(const Shape& shape, const Shape& strides) {
  int64_t expected = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    if (shape[i] != 1 && strides[i] != expected) return false;
    expected *= shape[i];
  }
  return true;
}

py::array to_numpy(const CudaArray& a, const Shape& shape, const Shape& strides, int64_t offset) {
  size_t n = 0;
  StridedView v = make_view(shape, strides, offset, a.size, "to_numpy", &n);
  py::array result;
  dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    py::array_t<T> host(std::vector<py::ssize_t>(shape.begin(), shape.end()));
    if (n > 0) {
      T* dst = host.mutable_data();
      if (is_compact(shape, strides)) {
        const T* src = a.data<T>() + offset;
        py::gil_scoped_release release;
        check_cuda(cudaMemcpy(dst, src, n * sizeof(T), cudaMemcpyDeviceToHost),
                   "to_numpy: cudaMemcpy");
      } else {
        CudaArray tmp(int64_t(n), dtype_name(a.dtype));
        compact_kernel<T><<<grid_for(n), kBlockSize>>>(a.data<T>(), tmp.data<T>(), v, n);
        check_launch("compact_kernel");
        py::gil_scoped_release release;
        check_cuda(cudaMemcpy(dst, tmp.data<T>(), n * sizeof(T), cudaMemcpyDeviceToHost),
                   "to_numpy: cudaMemcpy");
      }
    }
    result = host;
  });
  return result;
}

void from_numpy(py::array arr, CudaArray& out) {
  dispatch_dtype(out.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (!arr.dtype().is(py::dtype::of<T>()) && !arr.dtype().equal(py::dtype::of<T>())) {
      throw DTypeError("from_numpy: numpy array has dtype " +
                       std::string(py::str(arr.dtype())) + " but out is " +
                       dtype_name(out.dtype));
    }
  });
  const char order = arr.dtype().byteorder();
  if (order == '>') {
    throw DTypeError("from_numpy: numpy array is not in native byte order; convert it with "
                     ".astype first");
  }
  if (static_cast<size_t>(arr.size()) != out.size) {
    throw std::invalid_argument("from_numpy: numpy array has " + std::to_string(arr.size()) +
                                " elements, out has " + std::to_string(out.size));
  }
  if (out.size == 0) return;
  py::array contiguous = py::array::ensure(arr, py::array::c_style);
  if (!contiguous) throw py::error_already_set();
  const void* src = contiguous.data();
  py::gil_scoped_release release;
  check_cuda(cudaMemcpy(out.ptr, src, out.nbytes(), cudaMemcpyHostToDevice),
             "from_numpy: cudaMemcpy");
}

// Waits for all queued kernels and reports any asynchronous fault.
void synchronize() {
  py::gil_scoped_release release;
  check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

std::string device_name() {
  if (device_count() == 0) return "";
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  cudaDeviceProp prop{};
  check_cuda(cudaGetDeviceProperties(&prop, dev), "cudaGetDeviceProperties");
  return prop.name;
}

}  // namespace cuda
}  // namespace needle

PYBIND11_MODULE(ndarray_backend_cuda, m) {
  using namespace needle::cuda;
  namespace nc = needle::cuda;
  m.doc() = "needle CUDA backend: flat device buffers and the kernels of the NDArray interface";
  m.attr("__device_name__") = "cuda";

  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const DTypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    }
  });

  // module_local: a second build of this module loaded in the same process cannot clash.
  py::class_<CudaArray>(m, "Array", py::module_local())
      .def(py::init([](int64_t size, const py::object& dtype) {
             // Accept names and numpy dtypes alike, as the numpy backend does.
             std::string name = py::isinstance<py::str>(dtype)
                                    ? dtype.cast<std::string>()
                                    : py::str(py::module_::import("numpy").attr("dtype")(dtype)
                                                  .attr("name")).cast<std::string>();
             return std::make_unique<CudaArray>(size, name);
           }),
           py::arg("size"), py::arg("dtype") = "float32",
           "Uninitialised device buffer of `size` elements of `dtype` "
           "(float32, int8, uint8, int32). Raises RuntimeError without a CUDA device.")
      .def_property_readonly("size", [](const CudaArray& a) { return a.size; })
      .def_property_readonly("dtype", [](const CudaArray& a) { return std::string(dtype_name(a.dtype)); })
      .def("ptr", [](const CudaArray& a) { return reinterpret_cast<uintptr_t>(a.ptr); })
      .def("__repr__", [](const CudaArray& a) {
        return "<ndarray_backend_cuda.Array size=" + std::to_string(a.size) + " dtype=" +
               dtype_name(a.dtype) + ">";
      });

  m.def("device_count", &nc::device_count,
        "Number of usable CUDA devices (0 without a driver or device; never raises).");
  m.def("device_name", &nc::device_name, "Name of the current CUDA device ('' without one).");
  m.def("synchronize", &nc::synchronize, "Wait for queued kernels; raises on async faults.");

  m.def("to_numpy", &nc::to_numpy, py::arg("a"), py::arg("shape"), py::arg("strides"),
        py::arg("offset"));
  m.def("from_numpy", &nc::from_numpy, py::arg("a"), py::arg("out"));
  m.def("fill", &nc::fill, py::arg("out"), py::arg("value"));
  m.def("compact", &nc::compact, py::arg("a"), py::arg("out"), py::arg("shape"),
        py::arg("strides"), py::arg("offset"));
  m.def("ewise_setitem", &nc::ewise_setitem, py::arg("a"), py::arg("out"), py::arg("shape"),
        py::arg("strides"), py::arg("offset"));
  m.def("scalar_setitem", &nc::scalar_setitem, py::arg("size"), py::arg("val"), py::arg("out"),
        py::arg("shape"), py::arg("strides"), py::arg("offset"));
  m.def("astype", &nc::astype, py::arg("a"), py::arg("out"));

  m.def("ewise_add", [](const CudaArray& a, const CudaArray& b, CudaArray& o) { ewise_binary<AddOp>(a, b, o, "ewise_add"); });
  m.def("ewise_mul", [](const CudaArray& a, const CudaArray& b, CudaArray& o) { ewise_binary<MulOp>(a, b, o, "ewise_mul"); });
  m.def("ewise_div", [](const CudaArray& a, const CudaArray& b, CudaArray& o) { ewise_binary<DivOp>(a, b, o, "ewise_div"); });
  m.def("ewise_maximum", [](const CudaArray& a, const CudaArray& b, CudaArray& o) { ewise_binary<MaxOp>(a, b, o, "ewise_maximum"); });
  m.def("ewise_eq", [](const CudaArray& a, const CudaArray& b, CudaArray& o) { ewise_binary<EqOp>(a, b, o, "ewise_eq"); });
  m.def("ewise_ge", [](const CudaArray& a, const CudaArray& b, CudaArray& o) { ewise_binary<GeOp>(a, b, o, "ewise_ge"); });

  m.def("scalar_add", [](const CudaArray& a, float v, CudaArray& o) { scalar_binary<AddOp>(a, v, o, "scalar_add"); });
  m.def("scalar_mul", [](const CudaArray& a, float v, CudaArray& o) { scalar_binary<MulOp>(a, v, o, "scalar_mul"); });
  m.def("scalar_div", [](const CudaArray& a, float v, CudaArray& o) { scalar_binary<DivOp>(a, v, o, "scalar_div"); });
  m.def("scalar_power", [](const CudaArray& a, float v, CudaArray& o) { scalar_binary<PowOp>(a, v, o, "scalar_power"); });
  m.def("scalar_maximum", [](const CudaArray& a, float v, CudaArray& o) { scalar_binary<MaxOp>(a, v, o, "scalar_maximum"); });
  m.def("scalar_eq", [](const CudaArray& a, float v, CudaArray& o) { scalar_binary<EqOp>(a, v, o, "scalar_eq"); });
  m.def("scalar_ge", [](const CudaArray& a, float v, CudaArray& o) { scalar_binary<GeOp>(a, v, o, "scalar_ge"); });

  m.def("ewise_log", [](const CudaArray& a, CudaArray& o) { ewise_unary<LogOp>(a, o, "ewise_log"); });
  m.def("ewise_exp", [](const CudaArray& a, CudaArray& o) { ewise_unary<ExpOp>(a, o, "ewise_exp"); });
  m.def("ewise_tanh", [](const CudaArray& a, CudaArray& o) { ewise_unary<TanhOp>(a, o, "ewise_tanh"); });

  m.def("reduce_max", [](const CudaArray& a, CudaArray& o, int64_t r) { reduce<true>(a, o, r, "reduce_max"); },
        py::arg("a"), py::arg("out"), py::arg("reduce_size"));
  m.def("reduce_sum", [](const CudaArray& a, CudaArray& o, int64_t r) { reduce<false>(a, o, r, "reduce_sum"); },
        py::arg("a"), py::arg("out"), py::arg("reduce_size"));
  m.def("matmul", &nc::matmul, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("m"),
        py::arg("n"), py::arg("p"));

  register_quant_ops(m);
  register_int4_ops(m);
  register_emulation(m);
}
