// Python bindings of the int8 kernels (docs/ARCHITECTURE.md, "Integer GEMM backend call"):
// qpack_weights, qgemm, and a few underscore helpers for tests and benchmarks. Every argument
// is validated here, before any kernel touches memory.
#include "quant_ops.h"

#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "../common/checked_size.h"
#include "array.h"
#include "cpu_features.h"
#include "qgemm.h"

namespace py = pybind11;

namespace needle {
namespace cpu {
namespace {

// A packed weight buffer starts with this header (one cache line, so the panels that follow
// stay 64-byte aligned); qgemm checks it, so raw [n, k] weights or weights packed for another
// shape are rejected instead of silently misread.
constexpr int64_t kHeaderBytes = 64;
constexpr char kMagic[8] = {'n', 'd', 'l', 'q', 'p', 'k', '0', '1'};

struct PackHeader {
  char magic[8];
  int64_t n, k;
};

[[noreturn]] void value_error(const std::string& msg) { throw py::value_error(msg); }
[[noreturn]] void type_error(const std::string& msg) { throw py::type_error(msg); }

std::string s(int64_t v) { return std::to_string(v); }

void check_dims(const char* what, int64_t m, int64_t n, int64_t k) {
  if (m < 0 || n < 0 || k < 0)
    value_error(std::string(what) + ": sizes must be >= 0, got m=" + s(m) + " n=" + s(n) +
                " k=" + s(k));
  if (k > kQMaxK)
    value_error(std::string(what) + ": k=" + s(k) + " exceeds " + s(kQMaxK) +
                " (the int32 accumulator could overflow)");
  const int64_t lim = int64_t(1) << 31;
  if (m >= lim || n >= lim) value_error(std::string(what) + ": m or n too large");
}

QType qtype_of(const AlignedArray& a) {
  switch (a.dtype()) {
    case DType::kUint8: return QType::kUint8;
    case DType::kInt8: return QType::kInt8;
    case DType::kInt32: return QType::kInt32;
    default: type_error("not an integer dtype");
  }
}

void check_channel_array(const char* name, const AlignedArray& arr, int64_t n) {
  if (arr.dtype() != DType::kInt32)
    type_error(std::string("qgemm: ") + name + " must be int32, got " + dtype_name(arr.dtype()));
  if (static_cast<int64_t>(arr.size()) != n)
    value_error(std::string("qgemm: ") + name + " has " + s(arr.size()) +
                " elements, expected n = " + s(n));
}

std::unique_ptr<AlignedArray> qpack_weights_py(const AlignedArray& w, int64_t n, int64_t k) {
  if (w.dtype() != DType::kInt8)
    type_error(std::string("qpack_weights needs int8 weights, got ") + dtype_name(w.dtype()));
  check_dims("qpack_weights", 0, n, k);
  if (static_cast<int64_t>(w.size()) != checked_mul(n, k, "qpack_weights"))
    value_error("qpack_weights: weight size " + s(w.size()) + " != n*k = " + s(n) + "*" + s(k));
  auto out = std::make_unique<AlignedArray>(
      static_cast<size_t>(kHeaderBytes + qpack_size(n, k)), DType::kInt8);
  int8_t* base = out->i8();
  PackHeader h;
  std::memcpy(h.magic, kMagic, sizeof(kMagic));
  h.n = n;
  h.k = k;
  std::memset(base, 0, kHeaderBytes);
  std::memcpy(base, &h, sizeof(h));
  {
    py::gil_scoped_release release;
    qpack_weights(w.data<int8_t>(), n, k, base + kHeaderBytes);
  }
  return out;
}

// Checks shared by qgemm and qconv2d_nhwc (activations already checked), then fills g.
void check_gemm_params(const char* what, const AlignedArray& packed, AlignedArray& out,
                       int64_t n, int64_t k, int64_t a_zero_point, const AlignedArray& colsum,
                       const AlignedArray& bias, const AlignedArray& multiplier,
                       const AlignedArray& shift, int64_t out_zero_point, bool relu,
                       QgemmArgs& g) {
  const std::string w(what);
  if (packed.dtype() != DType::kInt8)
    type_error(w + " needs int8 packed weights, got " + dtype_name(packed.dtype()));
  if (out.dtype() != DType::kUint8 && out.dtype() != DType::kInt8 && out.dtype() != DType::kInt32)
    type_error(w + " output must be uint8, int8 or int32, got " + dtype_name(out.dtype()));
  check_channel_array("colsum", colsum, n);
  check_channel_array("bias", bias, n);
  check_channel_array("multiplier", multiplier, n);
  check_channel_array("shift", shift, n);
  PackHeader h{};
  if (static_cast<int64_t>(packed.size()) >= kHeaderBytes)
    std::memcpy(&h, packed.data<int8_t>(), sizeof(h));
  if (std::memcmp(h.magic, kMagic, sizeof(kMagic)) != 0)
    value_error(w + ": packed weights (size " + s(packed.size()) +
                ") were not made by this backend's qpack_weights");
  if (h.n != n || h.k != k)
    value_error(w + ": weights were packed for n=" + s(h.n) + " k=" + s(h.k) +
                ", called with n=" + s(n) + " k=" + s(k));
  if (static_cast<int64_t>(packed.size()) != kHeaderBytes + qpack_size(n, k))
    value_error(w + ": packed weights for n=" + s(n) + " k=" + s(k) + " need " +
                s(kHeaderBytes + qpack_size(n, k)) + " bytes, the buffer holds " +
                s(packed.size()) + " (truncated or not made by qpack_weights)");
  const int64_t i32min = INT32_MIN, i32max = INT32_MAX;
  if (a_zero_point < i32min || a_zero_point > i32max)
    value_error(w + ": a_zero_point " + s(a_zero_point) + " is outside the int32 range");
  if (out_zero_point < i32min || out_zero_point > i32max)
    value_error(w + ": out_zero_point " + s(out_zero_point) + " is outside the int32 range");
  const QType out_type = qtype_of(out);
  if (out_type != QType::kInt32) {
    const int32_t* sh = shift.data<int32_t>();
    for (int64_t c = 0; c < n; ++c)
      if (sh[c] < -30 || sh[c] > 31)
        value_error(w + ": shift[" + s(c) + "] = " + s(sh[c]) + " is outside [-30, 31]");
  }
  g.packed = packed.data<int8_t>() + kHeaderBytes;
  g.out = out.raw();
  g.out_type = out_type;
  g.n = n;
  g.k = k;
  g.a_zero_point = static_cast<int32_t>(a_zero_point);
  g.colsum = colsum.data<int32_t>();
  g.bias = bias.data<int32_t>();
  g.multiplier = multiplier.data<int32_t>();
  g.shift = shift.data<int32_t>();
  g.out_zero_point = static_cast<int32_t>(out_zero_point);
  g.relu = relu;
}

void check_activations(const char* what, const AlignedArray& a) {
  if (a.dtype() != DType::kUint8 && a.dtype() != DType::kInt8)
    type_error(std::string(what) + " needs uint8 or int8 activations, got " +
               dtype_name(a.dtype()));
}

void qgemm_py(const AlignedArray& a, const AlignedArray& packed, AlignedArray& out, int64_t m,
              int64_t n, int64_t k, int64_t a_zero_point, const AlignedArray& colsum,
              const AlignedArray& bias, const AlignedArray& multiplier,
              const AlignedArray& shift, int64_t out_zero_point, bool relu) {
  check_activations("qgemm", a);
  check_dims("qgemm", m, n, k);
  QgemmArgs g;
  check_gemm_params("qgemm", packed, out, n, k, a_zero_point, colsum, bias, multiplier, shift,
                    out_zero_point, relu, g);
  if (static_cast<int64_t>(a.size()) != checked_mul(m, k, "qgemm") ||
      static_cast<int64_t>(out.size()) != checked_mul(m, n, "qgemm"))
    value_error("qgemm: sizes a=" + s(a.size()) + " out=" + s(out.size()) +
                " do not fit m=" + s(m) + " n=" + s(n) + " k=" + s(k));
  g.a = a.raw();
  g.a_type = qtype_of(a);
  g.m = m;
  const QgemmIsa isa = qgemm_isa_for(n, k);
  py::gil_scoped_release release;
  qgemm(g, isa);
}

void qconv2d_nhwc_py(const AlignedArray& x, const AlignedArray& packed, AlignedArray& out,
                     int64_t batch, int64_t h, int64_t w, int64_t c, int64_t c_out, int64_t kh,
                     int64_t kw, int64_t stride, int64_t padding, int64_t a_zero_point,
                     const AlignedArray& colsum, const AlignedArray& bias,
                     const AlignedArray& multiplier, const AlignedArray& shift,
                     int64_t out_zero_point, bool relu) {
  check_activations("qconv2d_nhwc", x);
  if (batch < 0 || h < 1 || w < 1 || c < 1 || c_out < 0 || kh < 1 || kw < 1 || stride < 1 ||
      padding < 0)
    value_error("qconv2d_nhwc: bad geometry batch=" + s(batch) + " h=" + s(h) + " w=" + s(w) +
                " c=" + s(c) + " c_out=" + s(c_out) + " kernel=" + s(kh) + "x" + s(kw) +
                " stride=" + s(stride) + " padding=" + s(padding));
  const int64_t lim = int64_t(1) << 20;
  if (h > lim || w > lim || c > lim || kh > lim || kw > lim || padding > lim || stride > lim)
    value_error("qconv2d_nhwc: geometry too large (h, w, c, kernel, stride and padding must be "
                "at most 2^20)");
  const int64_t in_size = checked_product({batch, h, w, c}, "qconv2d_nhwc input");
  if (h + 2 * padding < kh || w + 2 * padding < kw)
    value_error("qconv2d_nhwc: kernel " + s(kh) + "x" + s(kw) + " is larger than the padded " +
                "input " + s(h + 2 * padding) + "x" + s(w + 2 * padding));
  const int64_t ho = (h + 2 * padding - kh) / stride + 1, wo = (w + 2 * padding - kw) / stride + 1;
  const int64_t k = checked_product({kh, kw, c}, "qconv2d_nhwc"),
                m = checked_product({batch, ho, wo}, "qconv2d_nhwc");
  check_dims("qconv2d_nhwc", m, c_out, k);
  const bool is_u8 = x.dtype() == DType::kUint8;
  if (a_zero_point < (is_u8 ? 0 : -128) || a_zero_point > (is_u8 ? 255 : 127))
    value_error("qconv2d_nhwc: a_zero_point " + s(a_zero_point) + " (the padding value) is " +
                "outside the " + dtype_name(x.dtype()) + " range");
  QgemmArgs g;
  check_gemm_params("qconv2d_nhwc", packed, out, c_out, k, a_zero_point, colsum, bias,
                    multiplier, shift, out_zero_point, relu, g);
  if (static_cast<int64_t>(x.size()) != in_size)
    value_error("qconv2d_nhwc: input size " + s(x.size()) + " != batch*h*w*c = " + s(in_size));
  if (static_cast<int64_t>(out.size()) != checked_mul(m, c_out, "qconv2d_nhwc"))
    value_error("qconv2d_nhwc: output size " + s(out.size()) + " != batch*ho*wo*c_out = " +
                s(batch) + "*" + s(ho) + "*" + s(wo) + "*" + s(c_out));
  QConvGeom geom;
  geom.batch = batch;
  geom.h = h;
  geom.w = w;
  geom.c = c;
  geom.kh = kh;
  geom.kw = kw;
  geom.stride = stride;
  geom.pad = padding;
  geom.ho = ho;
  geom.wo = wo;
  geom.pad_value = static_cast<int32_t>(a_zero_point);
  g.a = x.raw();
  g.a_type = qtype_of(x);
  g.m = m;
  g.conv = &geom;
  const QgemmIsa isa = qgemm_isa_for(c_out, k);
  py::gil_scoped_release release;
  qgemm(g, isa);
}

std::vector<std::string> available_isas() {
  std::vector<std::string> names;
  for (int i = 0; i < kQgemmIsaCount; ++i)
    if (qgemm_isa_supported(static_cast<QgemmIsa>(i)))
      names.emplace_back(qgemm_isa_name(static_cast<QgemmIsa>(i)));
  return names;
}

QgemmIsa isa_arg(const std::string& name) {
  try {
    return qgemm_isa_from_name(name.c_str());
  } catch (const std::invalid_argument& e) {
    value_error(e.what());
  }
}

}  // namespace

void register_quant_ops(py::module_& m) {
  m.def("qpack_weights", &qpack_weights_py, py::arg("w"), py::arg("n"), py::arg("k"),
        "Pack int8 weights [n, k] into the int8 GEMM layout (a header, then panels of 16\n"
        "output channels x groups of 4 k). Returns a new int8 Array for qgemm.");
  m.def("qgemm", &qgemm_py, py::arg("a"), py::arg("packed"), py::arg("out"), py::arg("m"),
        py::arg("n"), py::arg("k"), py::arg("a_zero_point"), py::arg("colsum"), py::arg("bias"),
        py::arg("multiplier"), py::arg("shift"), py::arg("out_zero_point"), py::arg("relu"),
        "out[m, n] = requantize(a[m, k] @ w[n, k]^T - a_zero_point * colsum + bias), or the\n"
        "raw int32 accumulator when out is int32 (docs/ARCHITECTURE.md, Integer GEMM).");
  m.def("qconv2d_nhwc", &qconv2d_nhwc_py, py::arg("x"), py::arg("packed"), py::arg("out"),
        py::arg("batch"), py::arg("h"), py::arg("w"), py::arg("c"), py::arg("c_out"),
        py::arg("kh"), py::arg("kw"), py::arg("stride"), py::arg("padding"),
        py::arg("a_zero_point"), py::arg("colsum"), py::arg("bias"), py::arg("multiplier"),
        py::arg("shift"), py::arg("out_zero_point"), py::arg("relu"),
        "Fused int8 convolution of an NHWC image x [batch, h, w, c] (uint8/int8, compact) with\n"
        "weights packed by qpack_weights(w [c_out, kh*kw*c] in (kh, kw, c) order, c_out,\n"
        "kh*kw*c). Out-of-image taps read a_zero_point. out [batch, ho, wo, c_out] with\n"
        "ho = (h + 2*padding - kh) // stride + 1; same epilogue as qgemm. Equal, bit for bit,\n"
        "to qgemm on the im2col matrix, without materialising it.");
  m.def("_qgemm_isa", [](const std::string& name) {
          if (name == "auto") qgemm_clear_forced_isa();
          else {
            const QgemmIsa isa = isa_arg(name);
            if (!qgemm_isa_supported(isa))
              value_error("int8 GEMM path '" + name + "' is not available here (available: " +
                          py::str(py::cast(available_isas())).cast<std::string>() + ")");
            qgemm_force_isa(isa);
          }
          return std::string(qgemm_isa_name(qgemm_default_isa()));
        }, py::arg("name"),
        "Force the int8 GEMM path ('scalar', 'avx2', 'avxvnni', 'avx512', 'vnni', 'amx',\n"
        "'amx-emulated') or return to\n"
        "automatic choice ('auto'). Returns the path now in use.");
  m.def("_qgemm_isas", &available_isas, "The int8 GEMM paths this CPU can run, lowest first.");
  m.def("_qgemm_isa_for", [](int64_t n, int64_t k) {
          return std::string(qgemm_isa_name(qgemm_isa_for(n, k)));
        }, py::arg("n"), py::arg("k"),
        "The path qgemm and qconv2d_nhwc take for n output channels and reduction length k:\n"
        "the path in use, except that an automatically chosen 'amx' gives short, narrow\n"
        "products (k < 256, or k < 512 with n < 48) to 'vnni'.");
  m.def("_qgemm_peak_gops", [](const std::string& name, double seconds) {
          const QgemmIsa isa = isa_arg(name);
          if (isa == QgemmIsa::kScalar || !qgemm_isa_supported(isa))
            value_error("no int8 peak loop for path '" + name + "' here");
          py::gil_scoped_release release;
          return qgemm_peak_gops(isa, seconds);
        }, py::arg("isa"), py::arg("seconds") = 0.2,
        "Measured one-thread peak of the int8 multiply-add unit (GOP/s) on path `isa`.");
  m.def("_amx_status", [] { return std::string(amx_status()); },
        "Why the AMX int8 path is or is not usable here, in words.");
  m.def("_f32_peak_gflops", [](double seconds) {
          py::gil_scoped_release release;
          return f32_fma_peak_gflops(seconds);
        }, py::arg("seconds") = 0.2, "Measured one-thread float32 FMA peak (GFLOP/s).");
}

}  // namespace cpu
}  // namespace needle
