// Strided gather / scatter / fill over the four dtypes (see strided.h).
#include "strided.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "../common/checked_size.h"
#include "parallel.h"

namespace needle {
namespace cpu {

namespace {

std::string vec_str(const std::vector<int64_t>& v) {
  std::string s = "(";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + (v.size() == 1 ? ",)" : ")");
}

enum class Mode { kGather, kScatter, kFill };

// Copies n elements between distinct buffers. Rows of im2col views are short (3 to a few
// dozen elements), where a call to memmove costs more than the copy: fixed-size memcpy pieces
// compile to plain loads and stores.
template <typename T>
inline void copy_row(const T* src, T* dst, int64_t n) {
  if (n * static_cast<int64_t>(sizeof(T)) > 256) {
    std::copy(src, src + n, dst);
    return;
  }
  const char* s = reinterpret_cast<const char*>(src);
  char* d = reinterpret_cast<char*>(dst);
  int64_t b = n * static_cast<int64_t>(sizeof(T));
  for (; b >= 16; b -= 16, s += 16, d += 16) std::memcpy(d, s, 16);
  if (b & 8) { std::memcpy(d, s, 8); s += 8; d += 8; }
  if (b & 4) { std::memcpy(d, s, 4); s += 4; d += 4; }
  if (b & 2) { std::memcpy(d, s, 2); s += 2; d += 2; }
  if (b & 1) *d = *s;
}

// Walks the view row by row (a row = the innermost axis). Rows [r0, r1) only, so OpenMP threads
// can each take a contiguous block of rows.
template <typename T, Mode M>
void walk_rows(const StridedView& v, T* base, const T* flat, T* flat_out, T value, int64_t r0,
               int64_t r1) {
  const int64_t nd = static_cast<int64_t>(v.shape.size());
  const int64_t inner = v.shape[nd - 1];
  const int64_t istride = v.strides[nd - 1];
  // Multi-index of row r0 over the outer axes, and its buffer position.
  std::vector<int64_t> idx(nd > 1 ? nd - 1 : 1, 0);
  int64_t pos = v.offset, rem = r0;
  for (int64_t d = nd - 2; d >= 0; --d) {
    idx[d] = rem % v.shape[d];
    rem /= v.shape[d];
    pos += idx[d] * v.strides[d];
  }
  // row(p, f): one row at buffer position p, flat position f; `unit` is istride == 1, a
  // compile-time constant so the copy loop below is specialised for it.
  auto walk = [&](auto unit) {
    auto row = [&](T* p, int64_t f) {
      if (decltype(unit)::value) {
        if (M == Mode::kGather) copy_row(p, flat_out + f, inner);
        if (M == Mode::kScatter) copy_row(flat + f, p, inner);
        if (M == Mode::kFill) std::fill(p, p + inner, value);
      } else {
        for (int64_t j = 0; j < inner; ++j) {
          if (M == Mode::kGather) flat_out[f + j] = p[j * istride];
          if (M == Mode::kScatter) p[j * istride] = flat[f + j];
          if (M == Mode::kFill) p[j * istride] = value;
        }
      }
    };
    if (nd == 1) {
      for (int64_t r = r0; r < r1; ++r) row(base + pos, r * inner);
      return;
    }
    // Runs of rows along the second-innermost axis, then the odometer over the axes outside
    // it (im2col rows are short, so the per-row bookkeeping matters).
    const int64_t d2 = nd - 2, n2 = v.shape[d2], s2 = v.strides[d2];
    for (int64_t r = r0; r < r1;) {
      const int64_t cnt = std::min(n2 - idx[d2], r1 - r);
      T* p = base + pos;
      int64_t f = r * inner;
      for (int64_t c = 0; c < cnt; ++c, p += s2, f += inner) row(p, f);
      r += cnt;
      idx[d2] += cnt;
      pos += cnt * s2;
      if (idx[d2] < n2) continue;
      pos -= n2 * s2;
      idx[d2] = 0;
      for (int64_t d = d2 - 1; d >= 0; --d) {  // advance the outer multi-index (odometer)
        pos += v.strides[d];
        if (++idx[d] < v.shape[d]) break;
        pos -= idx[d] * v.strides[d];
        idx[d] = 0;
      }
    }
  };
  if (istride == 1)
    walk(std::true_type());
  else
    walk(std::false_type());
}

// Gather for views whose innermost axis is not the input's contiguous one (transposes, NCHW <->
// NHWC, the weight-gradient im2col): element by element along the last axis would touch a new
// cache line per element, so copy 2-D tiles of (axis J, last axis) instead, where J is the axis
// with the smallest input stride.
constexpr int64_t kTile = 32;

template <typename T>
void tiled_gather(const StridedView& v, int jaxis, const T* base, T* out) {
  const int nd = static_cast<int>(v.shape.size());
  const int L = nd - 1;
  std::vector<int64_t> ostr(nd, 1);  // row-major strides of the output
  for (int d = nd - 2; d >= 0; --d) ostr[d] = ostr[d + 1] * v.shape[d + 1];
  std::vector<int> outer;  // the other axes, outermost first
  for (int d = 0; d < L; ++d)
    if (d != jaxis) outer.push_back(d);
  int64_t n_outer = 1;
  for (int d : outer) n_outer *= v.shape[d];
  const int64_t nJ = v.shape[jaxis], nL = v.shape[L];
  const int64_t sJ = v.strides[jaxis], sL = v.strides[L], oJ = ostr[jaxis];
  auto run = [&](int64_t o) {
    int64_t pin = v.offset, pout = 0, rem = o;
    for (int i = static_cast<int>(outer.size()) - 1; i >= 0; --i) {
      const int d = outer[i];
      const int64_t idx = rem % v.shape[d];
      rem /= v.shape[d];
      pin += idx * v.strides[d];
      pout += idx * ostr[d];
    }
    for (int64_t jb = 0; jb < nJ; jb += kTile) {
      const int64_t je = std::min(nJ, jb + kTile);
      for (int64_t lb = 0; lb < nL; lb += kTile) {
        const int64_t le = std::min(nL, lb + kTile);
        for (int64_t j = jb; j < je; ++j) {
          const T* src = base + pin + j * sJ;
          T* dst = out + pout + j * oJ;
          for (int64_t l = lb; l < le; ++l) dst[l] = src[l * sL];
        }
      }
    }
  };
#ifdef _OPENMP
  const int threads = num_threads();
  if (n_outer * nJ * nL >= kParallelMinElements && n_outer >= 2 && threads > 1) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t o = 0; o < n_outer; ++o) run(o);
    return;
  }
#endif
  for (int64_t o = 0; o < n_outer; ++o) run(o);
}

template <typename T, Mode M>
void strided_apply(const StridedView& view, T* base, const T* flat, T* flat_out, T value) {
  const StridedView v = coalesce(view);
  const int64_t total = v.size();
  if (total == 0) return;
  if (v.shape.empty()) {  // a single element
    if (M == Mode::kGather) flat_out[0] = base[v.offset];
    if (M == Mode::kScatter) base[v.offset] = flat[0];
    if (M == Mode::kFill) base[v.offset] = value;
    return;
  }
  if (M == Mode::kGather && v.shape.size() >= 2 && v.shape.back() >= 4) {
    // Tile when another axis has a much smaller input stride than the innermost one.
    const int nd = static_cast<int>(v.shape.size());
    int j = -1;
    for (int d = 0; d < nd - 1; ++d)
      if (v.shape[d] >= 4 && (j < 0 || std::llabs(v.strides[d]) < std::llabs(v.strides[j]))) j = d;
    if (j >= 0 && std::llabs(v.strides[j]) <= 2 && std::llabs(v.strides.back()) >= 8) {
      tiled_gather<T>(v, j, base, flat_out);
      return;
    }
  }
  const int64_t rows = total / v.shape.back();
  // Scatter into a view with stride 0 writes one element several times: keep it sequential so
  // the last write wins deterministically, as numpy's does.
  bool overlapping = false;
  if (M != Mode::kGather)
    for (int64_t s : v.strides) overlapping |= (s == 0);
#ifdef _OPENMP
  const int threads = num_threads();
  if (total >= kParallelMinElements && rows >= 2 && threads > 1 && !overlapping) {
#pragma omp parallel num_threads(threads)
    {
      const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
      const int64_t r0 = rows * t / nt, r1 = rows * (t + 1) / nt;
      if (r0 < r1) walk_rows<T, M>(v, base, flat, flat_out, value, r0, r1);
    }
    return;
  }
#endif
  (void)overlapping;
  walk_rows<T, M>(v, base, flat, flat_out, value, 0, rows);
}

}  // namespace

int64_t StridedView::size() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

void check_view(const StridedView& v, int64_t buffer_size, const char* what) {
  if (v.shape.size() != v.strides.size())
    throw std::invalid_argument(std::string(what) + ": shape " + vec_str(v.shape) + " and strides " +
                                vec_str(v.strides) + " differ in length");
  view_extent(v.shape.data(), v.strides.data(), v.shape.size(), v.offset, buffer_size, what);
}

StridedView coalesce(const StridedView& v) {
  StridedView out;
  out.offset = v.offset;
  for (size_t d = 0; d < v.shape.size(); ++d) {
    if (v.shape[d] == 1) continue;
    if (v.shape[d] == 0) {  // empty view: any shape of size 0 will do
      out.shape = {0};
      out.strides = {1};
      return out;
    }
    if (!out.shape.empty() && out.strides.back() == v.strides[d] * v.shape[d]) {
      out.shape.back() *= v.shape[d];
      out.strides.back() = v.strides[d];
    } else {
      out.shape.push_back(v.shape[d]);
      out.strides.push_back(v.strides[d]);
    }
  }
  return out;
}

template <typename T> void strided_gather(const T* base, const StridedView& v, T* out) {
  strided_apply<T, Mode::kGather>(v, const_cast<T*>(base), nullptr, out, T());
}
template <typename T> void strided_scatter(const T* in, const StridedView& v, T* base) {
  strided_apply<T, Mode::kScatter>(v, base, in, nullptr, T());
}
template <typename T> void strided_fill(T value, const StridedView& v, T* base) {
  strided_apply<T, Mode::kFill>(v, base, nullptr, nullptr, value);
}

#define NEEDLE_INSTANTIATE(T)                                                   \
  template void strided_gather<T>(const T*, const StridedView&, T*);            \
  template void strided_scatter<T>(const T*, const StridedView&, T*);           \
  template void strided_fill<T>(T, const StridedView&, T*);
NEEDLE_INSTANTIATE(float)
NEEDLE_INSTANTIATE(int8_t)
NEEDLE_INSTANTIATE(uint8_t)
NEEDLE_INSTANTIATE(int32_t)
#undef NEEDLE_INSTANTIATE

}  // namespace cpu
}  // namespace needle
