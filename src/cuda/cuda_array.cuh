// Shared pieces of the CUDA backend: the device buffer (`Array`), dtypes, error checks,
// strided-view descriptors and the numeric conversion rules of `astype`.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "../common/checked_size.h"

namespace needle {
namespace cuda {

// ---- errors --------------------------------------------------------------------------------

// Throws std::runtime_error("<what>: <CUDA error string>") unless `err` is cudaSuccess.
inline void check_cuda(cudaError_t err, const std::string& what) {
  if (err != cudaSuccess) {
    throw std::runtime_error("CUDA error in " + what + ": " + cudaGetErrorName(err) + " (" +
                             cudaGetErrorString(err) + ")");
  }
}

// Call right after a kernel launch: reports bad launch configurations and earlier async faults.
inline void check_launch(const char* kernel) {
  check_cuda(cudaGetLastError(), std::string("launch of ") + kernel);
}

// Number of usable CUDA devices; 0 (never an exception) when there is no driver or no device.
inline int device_count() {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later calls report their own failures
    return 0;
  }
  return n;
}

// Throws a clear error when no device can be used (called before the first allocation).
inline void require_device() {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess || n == 0) {
    std::string why = err != cudaSuccess ? std::string(cudaGetErrorString(err)) : "no devices";
    cudaGetLastError();
    throw std::runtime_error("needle CUDA backend: no CUDA device is available (" + why +
                             "); use needle.cpu() instead");
  }
}

// ---- dtypes --------------------------------------------------------------------------------

// A wrong dtype (the module translates it to Python's TypeError, as the other backends raise).
struct DTypeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class DType { kFloat32, kInt8, kUInt8, kInt32 };

inline DType parse_dtype(const std::string& name) {
  if (name == "float32") return DType::kFloat32;
  if (name == "int8") return DType::kInt8;
  if (name == "uint8") return DType::kUInt8;
  if (name == "int32") return DType::kInt32;
  throw DTypeError("unsupported dtype '" + name +
                              "' (expected float32, int8, uint8 or int32)");
}

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::kFloat32: return "float32";
    case DType::kInt8: return "int8";
    case DType::kUInt8: return "uint8";
    case DType::kInt32: return "int32";
  }
  return "unknown";
}

inline size_t dtype_size(DType d) {
  return (d == DType::kFloat32 || d == DType::kInt32) ? 4 : 1;
}

// Calls f(T{}) with T the C++ type of `d`, so one generic lambda serves every dtype.
template <typename F>
void dispatch_dtype(DType d, F&& f) {
  switch (d) {
    case DType::kFloat32: f(float{}); return;
    case DType::kInt8: f(int8_t{}); return;
    case DType::kUInt8: f(uint8_t{}); return;
    case DType::kInt32: f(int32_t{}); return;
  }
  throw DTypeError("unsupported dtype");
}

// ---- the device buffer ---------------------------------------------------------------------

// A flat, typed buffer in device memory (the backend's `Array`). Not copyable: Python owns it.
struct CudaArray {
  CudaArray(int64_t size_, const std::string& dtype_name_) : dtype(parse_dtype(dtype_name_)) {
    if (size_ < 0) {
      throw std::invalid_argument("Array size must be >= 0, got " + std::to_string(size_));
    }
    if (size_ >= kMaxElements) {
      throw std::invalid_argument("Array size " + std::to_string(size_) +
                                  " exceeds the limit of 2^60 elements");
    }
    size = static_cast<size_t>(size_);
    require_device();
    if (size > 0) {
      check_cuda(cudaMalloc(&ptr, size * dtype_size(dtype)),
                 "cudaMalloc of " + std::to_string(size * dtype_size(dtype)) + " bytes");
    }
  }
  ~CudaArray() {
    if (ptr != nullptr) cudaFree(ptr);  // never throw from a destructor
  }
  CudaArray(const CudaArray&) = delete;
  CudaArray& operator=(const CudaArray&) = delete;

  size_t nbytes() const { return size * dtype_size(dtype); }
  template <typename T>
  T* data() const {
    return static_cast<T*>(ptr);
  }

  size_t size = 0;
  DType dtype;
  void* ptr = nullptr;
};


inline void require_dtype(const CudaArray& a, DType d, const char* op, const char* arg) {
  if (a.dtype != d) {
    throw DTypeError(std::string(op) + ": " + arg + " must be " + dtype_name(d) + ", got " +
                     dtype_name(a.dtype));
  }
}

// Math ops accept float32 only.
inline void require_float32(const CudaArray& a, const char* op) {
  if (a.dtype != DType::kFloat32) {
    throw DTypeError(std::string(op) + " needs float32, got " + dtype_name(a.dtype));
  }
}

inline void require_size(const CudaArray& a, size_t n, const char* op, const char* arg) {
  if (a.size != n) {
    throw std::invalid_argument(std::string(op) + ": " + arg + " has " + std::to_string(a.size) +
                                " elements, expected " + std::to_string(n));
  }
}

// ---- strided views -------------------------------------------------------------------------

constexpr int kMaxDims = 8;

// A strided view passed to kernels by value (shape/strides/offset in elements).
struct StridedView {
  int32_t ndim;
  int64_t shape[kMaxDims];
  int64_t strides[kMaxDims];
  int64_t offset;
};

// Validates a view of `buffer_size` elements and returns it with its element count in `count`.
// Every index the view can reach must lie inside [0, buffer_size), checked here, before launch,
// with overflow-safe arithmetic (checked_size.h, shared with the CPU backend).
inline StridedView make_view(const std::vector<int64_t>& shape, const std::vector<int64_t>& strides,
                             int64_t offset, size_t buffer_size, const char* op, size_t* count) {
  if (shape.size() != strides.size()) {
    throw std::invalid_argument(std::string(op) + ": shape has " + std::to_string(shape.size()) +
                                " dims but strides has " + std::to_string(strides.size()));
  }
  if (shape.size() > static_cast<size_t>(kMaxDims)) {
    throw std::invalid_argument(std::string(op) + ": at most " + std::to_string(kMaxDims) +
                                " dims are supported, got " + std::to_string(shape.size()));
  }
  const ViewExtent e = view_extent(shape.data(), strides.data(), shape.size(), offset,
                                   static_cast<int64_t>(buffer_size), op);
  StridedView v{};
  v.ndim = static_cast<int32_t>(shape.size());
  v.offset = offset;
  for (size_t i = 0; i < shape.size(); ++i) {
    v.shape[i] = shape[i];
    v.strides[i] = strides[i];
  }
  *count = static_cast<size_t>(e.count);
  return v;
}

// Element offset (in the underlying buffer) of the i-th element of the view, row-major order.
__host__ __device__ inline int64_t view_index(const StridedView& v, int64_t i) {
  int64_t idx = v.offset;
  for (int d = v.ndim - 1; d >= 0; --d) {
    int64_t dim = v.shape[d];
    idx += (i % dim) * v.strides[d];
    i /= dim;
  }
  return idx;
}

// ---- conversions (the astype rules) ----------------------------------------------------------

template <typename T>
struct IntRange {
  static constexpr int64_t lo = static_cast<int64_t>(std::numeric_limits<T>::min());
  static constexpr int64_t hi = static_cast<int64_t>(std::numeric_limits<T>::max());
};

// Converts one value: float -> int rounds half to even, saturates, NaN -> 0; int -> int
// saturates; int -> float rounds to nearest. Same code on host and device.
template <typename Dst, typename Src>
__host__ __device__ __forceinline__ Dst convert_value(Src x) {
  if constexpr (std::is_same<Dst, float>::value) {
    return static_cast<float>(x);
  } else if constexpr (std::is_floating_point<Src>::value) {
    if (x != x) return Dst(0);  // NaN
    // rint uses the current rounding mode: round half to even.
    Src r = rint(x);
    if (r <= static_cast<Src>(IntRange<Dst>::lo)) return static_cast<Dst>(IntRange<Dst>::lo);
    if (r >= static_cast<Src>(IntRange<Dst>::hi)) return static_cast<Dst>(IntRange<Dst>::hi);
    return static_cast<Dst>(r);
  } else {
    int64_t v = static_cast<int64_t>(x);
    if (v < IntRange<Dst>::lo) v = IntRange<Dst>::lo;
    if (v > IntRange<Dst>::hi) v = IntRange<Dst>::hi;
    return static_cast<Dst>(v);
  }
}

// Launch geometry for a flat loop over n elements (grid-stride loops cover any n).
constexpr int kBlockSize = 256;
inline unsigned grid_for(size_t n) {
  size_t blocks = (n + kBlockSize - 1) / kBlockSize;
  const size_t kMaxBlocks = 65535u * 8u;
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

}  // namespace cuda
}  // namespace needle
