// Host emulation of the CUDA kernels (submodule `ndarray_backend_cuda.emulate`).
//
// The GEMM kernels are written as __host__ __device__ tile phases (gemm_f32.cuh, qgemm.cuh);
// here the same phases run on the CPU, block by block and thread by thread, with the kernel's
// __syncthreads() points as phase boundaries. Together with the strided-view and conversion
// helpers of cuda_array.cuh this checks the kernels' indexing and integer arithmetic against the
// numpy reference on machines without a GPU. Only the dp4a instruction is replaced by an exact
// byte loop and mma.sync by a warp-wide model of its fragment layout (warp_mma); warp-level
// reductions are not emulated.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "../common/int4_args.h"
#include "cuda_array.cuh"
#include "emulate.cuh"
#include "gemm_f32.cuh"
#include "int4_gemv.cuh"
#include "qgemm.cuh"

namespace py = pybind11;

namespace needle {
namespace cuda {

namespace {

constexpr int kCStyle = py::array::c_style | py::array::forcecast;

// The emulation runs the kernels thread by thread on one core: it is for small test shapes.
// Larger operands or results are refused before anything is allocated or copied.
constexpr int64_t kMaxEmulatedElements = int64_t(1) << 26;

void check_emulated(const char* what, std::initializer_list<int64_t> dims) {
  const int64_t n = checked_product(dims, what);
  if (n > kMaxEmulatedElements) {
    throw std::invalid_argument(std::string("emulate.") + what + ": " + std::to_string(n) +
                                " elements exceeds the emulation limit of 2^26 (use small test "
                                "shapes)");
  }
}

std::string np_dtype_name(const py::array& a) { return std::string(py::str(a.dtype())); }

template <typename T>
py::array_t<T, kCStyle> as_2d(const py::array& x, const char* what, const char* dtype) {
  if (np_dtype_name(x) != dtype) {
    throw DTypeError(std::string("emulate: ") + what + " must be " + dtype + ", got " +
                     np_dtype_name(x));
  }
  if (x.ndim() != 2) {
    throw std::invalid_argument(std::string("emulate: ") + what + " must be 2-D, got " +
                                std::to_string(x.ndim()) + "-D");
  }
  check_emulated(what, {int64_t(x.shape(0)), int64_t(x.shape(1))});
  return py::array_t<T, kCStyle>::ensure(x);
}

// out[M, P] = a[M, K] @ b[K, P] through the matmul kernel's tile phases.
py::array_t<float> emulate_matmul(const py::array& a_in, const py::array& b_in) {
  auto a = as_2d<float>(a_in, "a", "float32");
  auto b = as_2d<float>(b_in, "b", "float32");
  const int64_t M = a.shape(0), K = a.shape(1), P = b.shape(1);
  if (b.shape(0) != K) {
    throw std::invalid_argument("emulate.matmul: inner dimensions differ: " + std::to_string(K) +
                                " and " + std::to_string(b.shape(0)));
  }
  check_emulated("matmul", {M, P});
  py::array_t<float> out({M, P});
  using namespace sgemm;
  struct ThreadAcc { float v[TM][TN]; };
  std::vector<ThreadAcc> acc(kThreads);
  static float As[BK][BM + 1], Bs[BK][BN];
  for (int64_t row0 = 0; row0 < M; row0 += BM) {
    for (int64_t col0 = 0; col0 < P; col0 += BN) {
      for (auto& t : acc) std::memset(t.v, 0, sizeof(t.v));
      for (int64_t k0 = 0; k0 < K; k0 += BK) {
        for (int tid = 0; tid < kThreads; ++tid)
          load_tile(tid, a.data(), b.data(), M, K, P, row0, col0, k0, As, Bs);
        for (int tid = 0; tid < kThreads; ++tid) compute_tile(tid, As, Bs, acc[tid].v);
      }
      for (int tid = 0; tid < kThreads; ++tid)
        store_tile(tid, out.mutable_data(), M, P, row0, col0, acc[tid].v);
    }
  }
  return out;
}

template <typename AT, typename OutT>
void run_qgemm(const uint8_t* a8, const uint32_t* wp32, OutT* out, int64_t M, int64_t N,
               int64_t K, const qtile::Epilogue& ep) {
  using namespace qtile;
  struct ThreadAcc { int v[TM][TN]; };
  std::vector<ThreadAcc> acc(kThreads);
  static uint32_t As[BKW][kLd], Bs[BKW][kLd];
  const int64_t kw_total = (K + kKGroup - 1) / kKGroup;
  for (int64_t row0 = 0; row0 < M; row0 += BM) {
    for (int64_t col0 = 0; col0 < N; col0 += BN) {
      for (auto& t : acc) std::memset(t.v, 0, sizeof(t.v));
      for (int64_t kw0 = 0; kw0 < kw_total; kw0 += BKW) {
        for (int tid = 0; tid < kThreads; ++tid) {
          if (K % kKGroup == 0)
            load_tile<true>(tid, a8, wp32, M, N, K, row0, col0, kw0, As, Bs);
          else
            load_tile<false>(tid, a8, wp32, M, N, K, row0, col0, kw0, As, Bs);
        }
        for (int tid = 0; tid < kThreads; ++tid) compute_tile<AT>(tid, As, Bs, acc[tid].v);
      }
      for (int tid = 0; tid < kThreads; ++tid)
        store_tile<OutT>(tid, out, M, N, row0, col0, acc[tid].v, ep);
    }
  }
}

// mma.sync.m16n8k32 (8-bit inputs, int32 accumulators) for one warp, written from the PTX ISA
// fragment tables independently of qgemm.cuh: elements are unpacked from the 32 lanes'
// registers into A (16 x 32) and B (32 x 8), multiplied exactly, and handed back to the lanes.
template <typename AT>
void warp_mma(const qtile::mma::Fragments (&f)[32], int j, int (&acc)[32][qtile::mma::NT][4]) {
  int64_t A[16][32], B[32][8];
  for (int lane = 0; lane < 32; ++lane) {
    const int group = lane >> 2, tig = lane % 4;
    for (int e = 0; e < 16; ++e) {  // A element e lives in register e / 4, byte e % 4
      const int row = (e < 4 || (e >= 8 && e < 12)) ? group : group + 8;
      const int col = tig * 4 + (e & 3) + (e >= 8 ? 16 : 0);
      A[row][col] = int64_t(AT(uint8_t(f[lane].a[e / 4] >> (8 * (e % 4)))));
    }
    for (int e = 0; e < 8; ++e) {  // B element e lives in register e / 4, byte e % 4
      const int row = tig * 4 + (e & 3) + (e >= 4 ? 16 : 0);
      B[row][group] = int64_t(int8_t(uint8_t(f[lane].b[j][e / 4] >> (8 * (e % 4)))));
    }
  }
  for (int lane = 0; lane < 32; ++lane) {
    const int group = lane >> 2, tig = lane % 4;
    for (int e = 0; e < 4; ++e) {
      const int row = e < 2 ? group : group + 8, col = tig * 2 + (e & 1);
      int64_t sum = acc[lane][j][e];
      for (int k = 0; k < 32; ++k) sum += A[row][k] * B[k][col];
      acc[lane][j][e] = int(int32_t(uint32_t(uint64_t(sum))));
    }
  }
}

template <typename AT, typename OutT>
void run_qgemm_mma(const uint8_t* a8, const uint32_t* wp32, OutT* out, int64_t M, int64_t N,
                   int64_t K, const qtile::Epilogue& ep) {
  using namespace qtile;
  static uint32_t As[BKW][kLd], Bs[BKW][kLd];
  static int acc[mma::kWarps][32][mma::NT][4];
  const int64_t kw_total = (K + kKGroup - 1) / kKGroup;
  for (int64_t row0 = 0; row0 < M; row0 += BM) {
    for (int64_t col0 = 0; col0 < N; col0 += BN) {
      std::memset(acc, 0, sizeof(acc));
      for (int64_t kw0 = 0; kw0 < kw_total; kw0 += BKW) {
        for (int tid = 0; tid < kThreads; ++tid) {
          if (K % kKGroup == 0)
            load_tile<true>(tid, a8, wp32, M, N, K, row0, col0, kw0, As, Bs);
          else
            load_tile<false>(tid, a8, wp32, M, N, K, row0, col0, kw0, As, Bs);
        }
        for (int warp = 0; warp < mma::kWarps; ++warp) {
          for (int kw = 0; kw < BKW; kw += mma::KW) {
            mma::Fragments f[32];
            for (int lane = 0; lane < 32; ++lane)
              mma::load_fragments(warp, lane, kw, As, Bs, f[lane]);
            for (int j = 0; j < mma::NT; ++j) warp_mma<AT>(f, j, acc[warp]);
          }
        }
      }
      for (int warp = 0; warp < mma::kWarps; ++warp)
        for (int lane = 0; lane < 32; ++lane)
          mma::store_fragments<OutT>(warp, lane, out, M, N, row0, col0, acc[warp][lane], ep);
    }
  }
}

// The qgemm kernel on the host: a uint8/int8 [M, K], w int8 [N, K] (packed here exactly as
// qpack_weights packs it), per-channel int32 vectors of length N; returns out_dtype [M, N].
py::array emulate_qgemm(const py::array& a_in, const py::array& w_in, int32_t a_zero_point,
                        const std::vector<int32_t>& colsum, const std::vector<int32_t>& bias,
                        const std::vector<int32_t>& multiplier, const std::vector<int32_t>& shift,
                        int32_t out_zero_point, bool relu, const std::string& out_dtype,
                        const std::string& path) {
  if (path != "dp4a" && path != "mma") {
    throw std::invalid_argument("emulate.qgemm: path must be 'dp4a' or 'mma', got '" + path + "'");
  }
  const bool use_mma = path == "mma";
  const std::string a_dtype = np_dtype_name(a_in);
  if (a_dtype != "uint8" && a_dtype != "int8") {
    throw DTypeError("emulate.qgemm: a must be uint8 or int8, got " + a_dtype);
  }
  auto a = as_2d<uint8_t>(a_in.attr("view")("uint8"), "a", "uint8");
  auto w = as_2d<int8_t>(w_in, "w", "int8");
  const int64_t M = a.shape(0), K = a.shape(1), N = w.shape(0);
  if (w.shape(1) != K) {
    throw std::invalid_argument("emulate.qgemm: a has k = " + std::to_string(K) +
                                " but w has k = " + std::to_string(w.shape(1)));
  }
  for (const auto* v : {&colsum, &bias, &multiplier, &shift}) {
    if (int64_t(v->size()) != N) {
      throw std::invalid_argument("emulate.qgemm: per-channel vectors must have n = " +
                                  std::to_string(N) + " entries, got " +
                                  std::to_string(v->size()));
    }
  }
  if (K > qtile::kMaxK) {
    throw std::invalid_argument("emulate.qgemm: k = " + std::to_string(K) + " exceeds " +
                                std::to_string(qtile::kMaxK) + " (the int32 accumulator could "
                                "overflow)");
  }
  check_emulated("qgemm", {M, N});
  check_emulated("qgemm", {N, qtile::padded_k(K)});
  const DType out_type = parse_dtype(out_dtype);
  if (out_type == DType::kFloat32) throw DTypeError("emulate.qgemm: out_dtype must be integer");
  for (int32_t s : shift) {
    if (out_type != DType::kInt32 && (s < -30 || s > 31)) {
      throw std::invalid_argument("emulate.qgemm: shift n must be in [-30, 31], got " +
                                  std::to_string(s));
    }
  }
  // Pack as the device does; 32-bit words give the packed rows their alignment.
  const int64_t kp = qtile::padded_k(K);
  std::vector<uint32_t> packed(size_t(N * kp / 4) + 1, 0u);
  int8_t* packed8 = reinterpret_cast<int8_t*>(packed.data());
  for (int64_t i = 0; i < N * kp; ++i) packed8[i] = qtile::packed_value(w.data(), i, K, kp);
  // Activations in word-aligned storage (the device buffer comes from cudaMalloc).
  std::vector<uint32_t> a_words(size_t(M * K) / 4 + 1, 0u);
  std::memcpy(a_words.data(), a.data(), size_t(M * K));
  const uint8_t* a8 = reinterpret_cast<const uint8_t*>(a_words.data());

  qtile::Epilogue ep{};
  ep.a_zero_point = a_zero_point;
  ep.colsum = colsum.data();
  ep.bias = bias.data();
  ep.multiplier = multiplier.data();
  ep.shift = shift.data();
  ep.out_zero_point = out_zero_point;
  if (out_type != DType::kInt32) qtile::set_output_range(ep, out_type == DType::kUInt8, relu);

  py::array result;
  dispatch_dtype(out_type, [&](auto out_tag) {
    using OutT = decltype(out_tag);
    if constexpr (!std::is_same<OutT, float>::value) {
      py::array_t<OutT> out({M, N});
      OutT* o = out.mutable_data();
      if (a_dtype == "uint8") {
        if (use_mma) run_qgemm_mma<uint8_t, OutT>(a8, packed.data(), o, M, N, K, ep);
        else run_qgemm<uint8_t, OutT>(a8, packed.data(), o, M, N, K, ep);
      } else {
        if (use_mma) run_qgemm_mma<int8_t, OutT>(a8, packed.data(), o, M, N, K, ep);
        else run_qgemm<int8_t, OutT>(a8, packed.data(), o, M, N, K, ep);
      }
      result = out;
    }
  });
  return result;
}

// int4_gemm through the kernel's warp phases: per output, each step's 32 lane partials, then
// lane 0's fold, exactly as one warp of int4_gemm_kernel runs them.
py::array_t<float> emulate_int4_gemm(const py::array& x_in, const py::array& codes_in,
                                     const py::array& scales_in, const py::array& zeros_in,
                                     int64_t group) {
  auto x = as_2d<float>(x_in, "x", "float32");
  auto codes = as_2d<uint8_t>(codes_in, "codes", "uint8");
  auto scales = as_2d<float>(scales_in, "scales", "float32");
  auto zeros = as_2d<uint8_t>(zeros_in, "zeros", "uint8");
  const int64_t M = x.shape(0), K = x.shape(1), N = codes.shape(0);
  const Int4Dims d = int4_dims("emulate.int4_gemm", M, N, K, group);
  const int64_t ng = d.ng;
  if (codes.shape(1) != d.kb) {
    throw std::invalid_argument("emulate.int4_gemm: codes must be [n, " +
                                std::to_string((K + 1) / 2) + "] for k = " + std::to_string(K) +
                                ", got [" + std::to_string(codes.shape(0)) + ", " +
                                std::to_string(codes.shape(1)) + "]");
  }
  for (const auto* a : {&scales_in, &zeros_in}) {
    if (a->shape(0) != N || a->shape(1) != ng) {
      throw std::invalid_argument("emulate.int4_gemm: scales and zeros must be [" +
                                  std::to_string(N) + ", " + std::to_string(ng) + "]");
    }
  }
  int4_check_zero_points("emulate.int4_gemm", zeros.data(), N * ng);
  check_emulated("int4_gemm", {M, N});
  py::array_t<float> out({M, N});
  int4k::Int4Args a{x.data(), codes.data(), scales.data(), zeros.data(), out.mutable_data(),
                    M, N, K, group};
  float partials[int4k::kWarp];
  for (int64_t o = 0; o < M * N; ++o) {
    const int64_t mi = o / N, n = o % N;
    float y = 0.0f;
    for (int64_t step = 0; step < int4k::warp_steps(a); ++step) {
      for (int lane = 0; lane < int4k::kWarp; ++lane)
        partials[lane] = int4k::lane_partial(a, mi, n, step, lane);
      y = int4k::fold_step(a, n, step, partials, y);
    }
    a.out[o] = y;
  }
  return out;
}

// compact() of a strided view of the flat buffer `buf`, with the kernel's view_index.
py::array emulate_compact(const py::array& buf_in, const std::vector<int64_t>& shape,
                          const std::vector<int64_t>& strides, int64_t offset) {
  if (buf_in.ndim() != 1) throw std::invalid_argument("emulate.compact: buffer must be 1-D");
  const DType dt = parse_dtype(np_dtype_name(buf_in));
  size_t n = 0;
  StridedView v = make_view(shape, strides, offset, size_t(buf_in.size()), "compact", &n);
  check_emulated("compact", {int64_t(n)});
  py::array result;
  dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    auto buf = py::array_t<T, kCStyle>::ensure(buf_in);
    py::array_t<T> out(std::vector<py::ssize_t>(shape.begin(), shape.end()));
    T* o = out.mutable_data();
    for (size_t i = 0; i < n; ++i) o[i] = buf.data()[view_index(v, int64_t(i))];
    result = out;
  });
  return result;
}

// astype() element rule (convert_value), applied on the host.
py::array emulate_astype(const py::array& x_in, const std::string& dtype) {
  const DType src = parse_dtype(np_dtype_name(x_in));
  const DType dst = parse_dtype(dtype);
  check_emulated("astype", {int64_t(x_in.size())});
  py::array result;
  dispatch_dtype(src, [&](auto src_tag) {
    using Src = decltype(src_tag);
    auto x = py::array_t<Src, kCStyle>::ensure(x_in);
    dispatch_dtype(dst, [&](auto dst_tag) {
      using Dst = decltype(dst_tag);
      py::array_t<Dst> out(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
      for (py::ssize_t i = 0; i < x.size(); ++i)
        out.mutable_data()[i] = convert_value<Dst>(x.data()[i]);
      result = out;
    });
  });
  return result;
}

}  // namespace

void register_emulation(py::module_& m) {
  py::module_ e = m.def_submodule(
      "emulate",
      "Host emulation of the CUDA kernels (their own tile code run on the CPU), for checking "
      "indexing and integer arithmetic without a GPU. Slow: meant for small test shapes.");
  e.def("matmul", &emulate_matmul, py::arg("a"), py::arg("b"),
        "float32 a [M, K] @ b [K, P] through the matmul kernel's tiles.");
  e.def("qgemm", &emulate_qgemm, py::arg("a"), py::arg("w"), py::arg("a_zero_point"),
        py::arg("colsum"), py::arg("bias"), py::arg("multiplier"), py::arg("shift"),
        py::arg("out_zero_point"), py::arg("relu"), py::arg("out_dtype"),
        py::arg("path") = "dp4a",
        "qgemm of a [M, K] (uint8/int8) and unpacked int8 w [N, K] through the tiles of the "
        "dp4a kernel or (path='mma') the tensor-core kernel, with mma.sync emulated per warp.");
  e.def("int4_gemm", &emulate_int4_gemm, py::arg("x"), py::arg("codes"), py::arg("scales"),
        py::arg("zeros"), py::arg("group"),
        "x [M, K] float32 @ W^T for group-wise int4 W (codes uint8 [N, ceil(K/2)], scales "
        "float32 and zeros uint8 [N, ceil(K/group)]) through the int4_gemm kernel's warp "
        "phases.");
  e.def("compact", &emulate_compact, py::arg("buffer"), py::arg("shape"), py::arg("strides"),
        py::arg("offset"), "Gather a strided view of a 1-D buffer as the compact kernel does.");
  e.def("astype", &emulate_astype, py::arg("x"), py::arg("dtype"),
        "Convert with the element rule of the astype kernel.");
}

}  // namespace cuda
}  // namespace needle
