// Overflow-safe sizes and view extents, shared by the CPU and CUDA backends (host code only).
//
// Every native entry point turns caller-supplied counts, shapes, strides and offsets into
// element counts and index ranges through these helpers before it touches memory: all
// arithmetic is done with overflow checks, so a hostile argument raises
// std::invalid_argument (Python ValueError) naming the value instead of wrapping around.
//
// Limits (docs/ARCHITECTURE.md, "Limits and validation"): an element count, a byte count and
// every index a view reaches stay below kMaxElements = 2^60, so n * itemsize and one extra
// stride step past a view's end still fit in int64.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <vector>

namespace needle {

constexpr int64_t kMaxElements = int64_t(1) << 60;

// The exception of every size check (Python: ValueError).
struct SizeError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

inline std::string dims_str(const int64_t* v, size_t n) {
  std::string s = "(";
  for (size_t i = 0; i < n; ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + (n == 1 ? ",)" : ")");
}
inline std::string dims_str(const std::vector<int64_t>& v) { return dims_str(v.data(), v.size()); }

// a * b for counts a, b >= 0; throws unless both are >= 0 and the product is < kMaxElements.
inline int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t r = 0;
  if (a < 0 || b < 0)
    throw SizeError(std::string(what) + ": size " + std::to_string(a < 0 ? a : b) +
                    " must be >= 0");
  if (__builtin_mul_overflow(a, b, &r) || r >= kMaxElements)
    throw SizeError(std::string(what) + ": " + std::to_string(a) + " * " + std::to_string(b) +
                    " elements exceeds the limit 2^60");
  return r;
}

// a + b for counts a, b >= 0 with the same limit.
inline int64_t checked_add(int64_t a, int64_t b, const char* what) {
  int64_t r = 0;
  if (a < 0 || b < 0)
    throw SizeError(std::string(what) + ": size " + std::to_string(a < 0 ? a : b) +
                    " must be >= 0");
  if (__builtin_add_overflow(a, b, &r) || r >= kMaxElements)
    throw SizeError(std::string(what) + ": " + std::to_string(a) + " + " + std::to_string(b) +
                    " exceeds the limit 2^60");
  return r;
}

// The product of several counts (m * n * p ...), each >= 0, below kMaxElements.
inline int64_t checked_product(std::initializer_list<int64_t> dims, const char* what) {
  int64_t r = 1;
  for (int64_t d : dims) r = checked_mul(r, d, what);
  return r;
}

// Element count of a shape: throws on a negative dimension or when the product of its nonzero
// dimensions reaches kMaxElements (so even an empty shape stays representable, e.g. by numpy).
inline int64_t checked_count(const int64_t* shape, size_t ndim, const char* what) {
  int64_t n = 1;
  bool empty = false;
  for (size_t d = 0; d < ndim; ++d) {
    if (shape[d] < 0)
      throw SizeError(std::string(what) + ": negative dimension " + std::to_string(shape[d]) +
                      " in shape " + dims_str(shape, ndim));
    if (shape[d] == 0) {
      empty = true;
      continue;
    }
    int64_t r = 0;
    if (__builtin_mul_overflow(n, shape[d], &r) || r >= kMaxElements)
      throw SizeError(std::string(what) + ": shape " + dims_str(shape, ndim) +
                      " has more than 2^60 elements");
    n = r;
  }
  return empty ? 0 : n;
}
inline int64_t checked_count(const std::vector<int64_t>& shape, const char* what) {
  return checked_count(shape.data(), shape.size(), what);
}

// What a strided view reaches: its element count and the lowest / highest buffer index.
struct ViewExtent {
  int64_t count = 0;
  int64_t lo = 0, hi = -1;  // count == 0: nothing is reached
};

// Validates the view (shape, strides, offset; all in elements) of a buffer of `buffer_size`
// elements: equal lengths, no negative dimension, count < 2^60, and every element it reaches
// inside [0, buffer_size), computed without overflow. An empty view (a zero dimension) reaches
// nothing and is valid whatever its strides and offset. Throws SizeError naming the values.
inline ViewExtent view_extent(const int64_t* shape, const int64_t* strides, size_t ndim,
                              int64_t offset, int64_t buffer_size, const char* what) {
  ViewExtent e;
  e.count = checked_count(shape, ndim, what);
  if (e.count == 0) return e;
  auto describe = [&]() {
    return std::string(what) + ": view shape=" + dims_str(shape, ndim) +
           " strides=" + dims_str(strides, ndim) + " offset=" + std::to_string(offset);
  };
  if (offset < 0 || offset >= buffer_size)
    throw SizeError(describe() + " starts outside a buffer of " + std::to_string(buffer_size) +
                    " elements");
  int64_t lo = offset, hi = offset;
  for (size_t d = 0; d < ndim; ++d) {
    int64_t span = 0;
    if (__builtin_mul_overflow(shape[d] - 1, strides[d], &span) ||
        (span < 0 ? __builtin_add_overflow(lo, span, &lo) : __builtin_add_overflow(hi, span, &hi)) ||
        lo < 0 || hi >= buffer_size)
      throw SizeError(describe() + " reaches outside a buffer of " +
                      std::to_string(buffer_size) + " elements");
  }
  e.lo = lo;
  e.hi = hi;
  return e;
}

}  // namespace needle
