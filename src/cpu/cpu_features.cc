// Run-time CPU feature detection; see cpu_features.h.
#include "cpu_features.h"

#include <cctype>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace needle {
namespace cpu {
namespace {

struct CpuFlags {
  bool avx2_fma = false, avx512f = false, avx512bw = false, avx512_vnni = false, avx_vnni = false;
};

// What the hardware (and OS: libgcc checks the XCR0 register state) supports, probed once.
const CpuFlags& cpu_flags() {
  static const CpuFlags flags = [] {
    CpuFlags f;
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    f.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    f.avx512f = f.avx2_fma && __builtin_cpu_supports("avx512f");
    f.avx512bw = f.avx512f && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl");
    f.avx512_vnni = f.avx512bw && __builtin_cpu_supports("avx512vnni");
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
    f.avx_vnni = f.avx2_fma && __builtin_cpu_supports("avxvnni");
#endif
#endif
    return f;
  }();
  return flags;
}

}  // namespace

IsaLevel isa_limit() {
  const char* env = std::getenv("NEEDLE_ISA");
  if (env == nullptr || env[0] == '\0') return IsaLevel::kVnni;
  std::string v(env);
  for (char& c : v) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (v == "scalar") return IsaLevel::kScalar;
  if (v == "avx2") return IsaLevel::kAvx2;
  if (v == "avx512") return IsaLevel::kAvx512;
  if (v == "vnni") return IsaLevel::kVnni;
  throw std::invalid_argument("NEEDLE_ISA must be one of scalar, avx2, avx512, vnni; got '" +
                              std::string(env) + "'");
}

const char* isa_level_name(IsaLevel level) {
  switch (level) {
    case IsaLevel::kScalar: return "scalar";
    case IsaLevel::kAvx2: return "avx2";
    case IsaLevel::kAvx512: return "avx512";
    case IsaLevel::kVnni: return "vnni";
  }
  return "unknown";
}

bool has_avx2_fma() { return cpu_flags().avx2_fma && isa_limit() >= IsaLevel::kAvx2; }
bool has_avx512f() { return cpu_flags().avx512f && isa_limit() >= IsaLevel::kAvx512; }
bool has_avx512bw() { return cpu_flags().avx512bw && isa_limit() >= IsaLevel::kAvx512; }
bool has_avx512_vnni() { return cpu_flags().avx512_vnni && isa_limit() >= IsaLevel::kVnni; }
bool has_avx_vnni() { return cpu_flags().avx_vnni && isa_limit() >= IsaLevel::kVnni; }

IsaLevel best_isa() {
  const IsaLevel limit = isa_limit();
  const CpuFlags& f = cpu_flags();
  IsaLevel hw = IsaLevel::kScalar;
  if (f.avx2_fma) hw = IsaLevel::kAvx2;
  if (f.avx512bw) hw = IsaLevel::kAvx512;
  if (f.avx512_vnni || (f.avx512bw && f.avx_vnni)) hw = IsaLevel::kVnni;
  return hw < limit ? hw : limit;
}

}  // namespace cpu
}  // namespace needle
