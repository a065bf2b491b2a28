// Run-time CPU feature detection; see cpu_features.h.
#include "cpu_features.h"

#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace needle {
namespace cpu {
namespace {

struct CpuFlags {
  bool avx2_fma = false, avx512f = false, avx512bw = false, avx512_vnni = false, avx_vnni = false;
  bool amx = false;            // usable: all of the below
  const char* amx_why = "";  // the first missing piece, or "available"
};

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
// AMX-TILE and AMX-INT8 (CPUID leaf 7 EDX bits 24, 25), the OS enabling the tile state in
// XCR0 (bits 17 TILECFG, 18 TILEDATA), then Linux's per-process permission for tile data:
// without it the first tile instruction faults.
const char* probe_amx(bool vnni512) {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return "CPUID leaf 7 is missing";
  if (!((d >> 24) & 1) || !((d >> 25) & 1)) return "the CPU has no amx_tile/amx_int8";
  if (!vnni512) return "the CPU has AMX but no AVX-512 VNNI (used by the AMX epilogue)";
  if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1)) return "the OS has not enabled XSAVE";
  uint32_t xlo = 0, xhi = 0;
  __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
  if (((xlo >> 17) & 3) != 3) return "the OS has not enabled the AMX tile state (XCR0)";
#if defined(__linux__) && defined(__x86_64__)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0)
    return "the Linux kernel refused tile data (arch_prctl ARCH_REQ_XCOMP_PERM failed)";
  return "available";
#else
  return "AMX use needs Linux (tile-data permission request)";
#endif
}
#endif

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
    f.amx_why = probe_amx(f.avx512_vnni);
    f.amx = std::string(f.amx_why) == "available";
#else
    f.amx_why = "not an x86-64 CPU";
#endif
    return f;
  }();
  return flags;
}

}  // namespace

IsaLevel isa_limit() {
  const char* env = std::getenv("NEEDLE_ISA");
  if (env == nullptr || env[0] == '\0') return IsaLevel::kAmx;
  std::string v(env);
  for (char& c : v) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (v == "scalar") return IsaLevel::kScalar;
  if (v == "avx2") return IsaLevel::kAvx2;
  if (v == "avx512") return IsaLevel::kAvx512;
  if (v == "vnni") return IsaLevel::kVnni;
  if (v == "amx") return IsaLevel::kAmx;
  throw std::invalid_argument("NEEDLE_ISA must be one of scalar, avx2, avx512, vnni, amx; got '" +
                              std::string(env) + "'");
}

const char* isa_level_name(IsaLevel level) {
  switch (level) {
    case IsaLevel::kScalar: return "scalar";
    case IsaLevel::kAvx2: return "avx2";
    case IsaLevel::kAvx512: return "avx512";
    case IsaLevel::kVnni: return "vnni";
    case IsaLevel::kAmx: return "amx";
  }
  return "unknown";
}

bool has_avx2_fma() { return cpu_flags().avx2_fma && isa_limit() >= IsaLevel::kAvx2; }
bool has_avx512f() { return cpu_flags().avx512f && isa_limit() >= IsaLevel::kAvx512; }
bool has_avx512bw() { return cpu_flags().avx512bw && isa_limit() >= IsaLevel::kAvx512; }
bool has_avx512_vnni() { return cpu_flags().avx512_vnni && isa_limit() >= IsaLevel::kVnni; }
bool has_avx_vnni() { return cpu_flags().avx_vnni && isa_limit() >= IsaLevel::kVnni; }
bool has_amx_int8() { return cpu_flags().amx && isa_limit() >= IsaLevel::kAmx; }
const char* amx_status() { return cpu_flags().amx_why; }

bool isa_demands_amx() {
  const char* env = std::getenv("NEEDLE_ISA");
  return env != nullptr && isa_limit() == IsaLevel::kAmx && env[0] != '\0';
}

IsaLevel best_isa() {
  const IsaLevel limit = isa_limit();
  const CpuFlags& f = cpu_flags();
  IsaLevel hw = IsaLevel::kScalar;
  if (f.avx2_fma) hw = IsaLevel::kAvx2;
  if (f.avx512bw) hw = IsaLevel::kAvx512;
  if (f.avx512_vnni || (f.avx512bw && f.avx_vnni)) hw = IsaLevel::kVnni;
  if (f.amx) hw = IsaLevel::kAmx;
  return hw < limit ? hw : limit;
}

}  // namespace cpu
}  // namespace needle
