// Strided copies of the CPU backend: compact (gather), ewise_setitem (scatter), scalar_setitem.
//
// A view is (shape, strides, offset) in elements over a flat buffer; strides may be zero
// (broadcast) or negative (flip). The callers validate the view against the buffer first
// (check_view); these kernels assume every reachable index is in bounds.
#pragma once
#include <cstdint>
#include <vector>

namespace needle {
namespace cpu {

struct StridedView {
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;
  int64_t offset = 0;
  int64_t size() const;
};

// Throws std::invalid_argument (naming the values) unless shape and strides have the same
// length, no dimension is negative, the element count is below 2^60 and every element the view
// reaches lies in [0, buffer_size), all computed without overflow (checked_size.h).
void check_view(const StridedView& v, int64_t buffer_size, const char* what);

// Drops size-1 axes and merges axes that are contiguous with each other, so the innermost loop
// is as long as possible. The element order of the view is unchanged.
StridedView coalesce(const StridedView& v);

// out[i] = base[view(i)] for i in row-major order of the view.
template <typename T> void strided_gather(const T* base, const StridedView& v, T* out);
// base[view(i)] = in[i].
template <typename T> void strided_scatter(const T* in, const StridedView& v, T* base);
// base[view(i)] = value.
template <typename T> void strided_fill(T value, const StridedView& v, T* base);

}  // namespace cpu
}  // namespace needle
