// The flat buffer behind every NDArray of the CPU backend (Python: ndarray_backend_cpu.Array).
//
// An AlignedArray owns `size()` elements of one dtype in a 64-byte aligned allocation (one
// cache line, and the widest vector load). Kernels get typed pointers through data<T>(), which
// checks the dtype, so a kernel can never reinterpret int8 bytes as floats by mistake.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>

#include "../common/checked_size.h"
#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

namespace needle {
namespace cpu {

enum class DType : int { kFloat32 = 0, kInt8 = 1, kUint8 = 2, kInt32 = 3 };

constexpr std::size_t kAlignment = 64;
// Buffers of at least this many bytes are aligned to 2 MiB and marked for transparent huge
// pages (as numpy does): far fewer page faults when a fresh buffer is first written.
constexpr std::size_t kHugePageBytes = std::size_t(1) << 21;
constexpr std::size_t kHugePageThreshold = std::size_t(4) << 20;

// A dtype mismatch (the CPU module turns it into Python's TypeError; it is still a
// std::invalid_argument for C++ callers).
struct DTypeError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::kFloat32: return "float32";
    case DType::kInt8: return "int8";
    case DType::kUint8: return "uint8";
    case DType::kInt32: return "int32";
  }
  return "unknown";
}

// "float32", "int8", "uint8" or "int32"; anything else throws DTypeError.
inline DType dtype_from_name(const std::string& name) {
  if (name == "float32") return DType::kFloat32;
  if (name == "int8") return DType::kInt8;
  if (name == "uint8") return DType::kUint8;
  if (name == "int32") return DType::kInt32;
  throw DTypeError("unsupported dtype '" + name +
                              "'; expected float32, int8, uint8 or int32");
}

inline std::size_t dtype_size(DType d) {
  switch (d) {
    case DType::kFloat32: return 4;
    case DType::kInt8: return 1;
    case DType::kUint8: return 1;
    case DType::kInt32: return 4;
  }
  return 1;
}

// The DType of a C++ element type: DTypeOf<float>::value == DType::kFloat32, ...
template <typename T> struct DTypeOf;
template <> struct DTypeOf<float> { static constexpr DType value = DType::kFloat32; };
template <> struct DTypeOf<int8_t> { static constexpr DType value = DType::kInt8; };
template <> struct DTypeOf<uint8_t> { static constexpr DType value = DType::kUint8; };
template <> struct DTypeOf<int32_t> { static constexpr DType value = DType::kInt32; };

class AlignedArray {
 public:
  AlignedArray(std::size_t size, DType dtype) : size_(size), dtype_(dtype) {
    const std::size_t elem = dtype_size(dtype);
    // The limit every native size check uses (checked_size.h): byte counts and view indices
    // of any buffer then fit in int64.
    if (size >= static_cast<std::size_t>(kMaxElements))
      throw std::invalid_argument("Array size " + std::to_string(size) +
                                  " exceeds the limit of 2^60 elements");
    // Round the byte count up to whole cache lines (>= one line, so size 0 is fine too).
    std::size_t bytes = (size * elem + kAlignment - 1) / kAlignment * kAlignment;
    if (bytes == 0) bytes = kAlignment;
    const bool huge = bytes >= kHugePageThreshold;
    void* p = nullptr;
    if (posix_memalign(&p, huge ? kHugePageBytes : kAlignment, bytes) != 0) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (huge) madvise(p, bytes / kHugePageBytes * kHugePageBytes, MADV_HUGEPAGE);  // a hint only
#endif
    data_ = p;
#if defined(__SANITIZE_ADDRESS__)
    // The rounding slack lies inside the allocation, so ASan would let a kernel read or write
    // it unnoticed: mark it off limits (make sanitize), as if the buffer ended at nbytes().
    ASAN_POISON_MEMORY_REGION(static_cast<char*>(p) + size * elem, bytes - size * elem);
    bytes_ = bytes;
#endif
  }
  ~AlignedArray() {
#if defined(__SANITIZE_ADDRESS__)
    ASAN_UNPOISON_MEMORY_REGION(data_, bytes_);
#endif
    std::free(data_);
  }
  AlignedArray(const AlignedArray&) = delete;
  AlignedArray& operator=(const AlignedArray&) = delete;

  std::size_t size() const { return size_; }
  DType dtype() const { return dtype_; }
  std::size_t nbytes() const { return size_ * dtype_size(dtype_); }
  // Address of the first element (Python's Array.ptr()).
  std::uintptr_t ptr() const { return reinterpret_cast<std::uintptr_t>(data_); }
  void* raw() { return data_; }
  const void* raw() const { return data_; }

  // Throws DTypeError("<what> needs int8, got float32") on a dtype mismatch.
  void check_dtype(DType expected, const char* what) const {
    if (dtype_ != expected)
      throw DTypeError(std::string(what) + " needs " + dtype_name(expected) +
                                  ", got " + dtype_name(dtype_));
  }

  // Typed pointer; checks that T matches the dtype.
  template <typename T> T* data(const char* what = "Array access") {
    check_dtype(DTypeOf<T>::value, what);
    return static_cast<T*>(data_);
  }
  template <typename T> const T* data(const char* what = "Array access") const {
    check_dtype(DTypeOf<T>::value, what);
    return static_cast<const T*>(data_);
  }
  float* f32(const char* what = "Array access") { return data<float>(what); }
  int8_t* i8(const char* what = "Array access") { return data<int8_t>(what); }
  uint8_t* u8(const char* what = "Array access") { return data<uint8_t>(what); }
  int32_t* i32(const char* what = "Array access") { return data<int32_t>(what); }

 private:
  std::size_t size_;
  DType dtype_;
  void* data_ = nullptr;
#if defined(__SANITIZE_ADDRESS__)
  std::size_t bytes_ = 0;
#endif
};

// Calls f(T*) with the element type of `a` (dispatch over the four dtypes).
template <typename F> auto dispatch_dtype(AlignedArray& a, F&& f) {
  switch (a.dtype()) {
    case DType::kFloat32: return f(static_cast<float*>(a.raw()));
    case DType::kInt8: return f(static_cast<int8_t*>(a.raw()));
    case DType::kUint8: return f(static_cast<uint8_t*>(a.raw()));
    case DType::kInt32: return f(static_cast<int32_t*>(a.raw()));
  }
  throw std::invalid_argument("corrupt dtype");
}

}  // namespace cpu
}  // namespace needle
