// Run-time CPU feature detection shared by the native kernels.
//
// The module is built with baseline x86-64 flags only; each kernel family asks these functions
// which wider instruction set it may use and dispatches to a function compiled with
// __attribute__((target(...))). The environment variable NEEDLE_ISA caps the choice so tests
// can exercise every path on one machine:
//
//   NEEDLE_ISA=scalar   portable C++ only
//   NEEDLE_ISA=avx2     AVX2 + FMA at most
//   NEEDLE_ISA=avx512   AVX-512 (F/BW/VL) at most, no VNNI
//   NEEDLE_ISA=vnni     everything but AMX
//   NEEDLE_ISA=amx      everything the CPU has (the default when unset or empty); set
//                       explicitly, the int8 GEMM requires AMX and fails with the reason
//                       when the CPU or the kernel does not offer it
//
// A level above what the CPU supports is simply not reached (forcing can only lower the path).
// NEEDLE_ISA is read on every call, so a process may change it between kernel calls.
#pragma once

namespace needle {
namespace cpu {

enum class IsaLevel : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kVnni = 3, kAmx = 4 };

// The cap set by NEEDLE_ISA (kAmx when unset/empty). Throws std::invalid_argument naming the
// value when NEEDLE_ISA is not one of scalar, avx2, avx512, vnni, amx (case-insensitive).
IsaLevel isa_limit();
// True when NEEDLE_ISA is explicitly "amx" (a demand, not only a cap).
bool isa_demands_amx();

// "scalar", "avx2", "avx512", "vnni" or "amx".
const char* isa_level_name(IsaLevel level);

// Each is true when the CPU (and OS) support the feature AND NEEDLE_ISA allows its level.
bool has_avx2_fma();     // AVX2 and FMA3                           level avx2
bool has_avx512f();      // AVX-512 Foundation                      level avx512
bool has_avx512bw();     // AVX-512 F + BW + VL (byte/word ops)     level avx512
bool has_avx512_vnni();  // AVX-512 F + BW + VL + VNNI (vpdpbusd)   level vnni
bool has_avx_vnni();     // AVX2 + FMA + AVX-VNNI (256-bit vpdpbusd) level vnni
// AMX-TILE + AMX-INT8 + AVX-512 VNNI in CPUID, tile state enabled by the OS (XCR0), and the
// Linux permission to use tile data granted (arch_prctl(ARCH_REQ_XCOMP_PERM,
// XFEATURE_XTILEDATA), requested once per process)                 level amx
bool has_amx_int8();
// Why AMX is or is not usable, in words (for error messages and benchmark records).
const char* amx_status();

// The highest level usable now: min(what the CPU supports, isa_limit()).
IsaLevel best_isa();

}  // namespace cpu
}  // namespace needle
