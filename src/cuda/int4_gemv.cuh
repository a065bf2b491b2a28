// Weight-only int4 matrix product of the CUDA backend (`int4_gemm`, int4_ops.cu) as
// __host__ __device__ warp phases, so the host emulation (emulate.cu) runs the same code.
//
// out[m, n] = x[m, k] @ W^T for W [n, k] stored group-wise: codes uint8 [n, ceil(k / 2)] (two
// per byte, even positions in the low nibble), scales float32 and zero points uint8
// [n, ceil(k / group)]. Bit for bit the rule of reference.int4_gemm_reference (the CPU kernel's
// order): per group, 16 partial sums (8 lanes for the even positions t, 8 for the odd ones,
// lane (t % 16) / 2, t counted from the group's start), each summed in increasing t with a
// separate multiply and add; q = pe + po; S = ((q0 + q4) + (q2 + q6)) + ((q1 + q5) + (q3 + q7));
// then y = y + s * S group after group, from y = 0.
//
// One warp computes one output: lane L owns partial sum L % 16 of the groups g = 2 j + L / 16,
// so each step covers two groups; lane 0 then folds both into y in group order. No fused
// multiply-add anywhere: the device code uses the round-to-nearest intrinsics, which nvcc
// never contracts.
#pragma once

#include <cstdint>

namespace needle {
namespace cuda {
namespace int4k {

constexpr int kWarp = 32;
constexpr int kPartials = 16;      // partial sums per group (8 even + 8 odd lanes)
constexpr int kWarpsPerBlock = 8;  // outputs per block of the device kernel

__host__ __device__ inline float fmul(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

__host__ __device__ inline float fadd(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

struct Int4Args {
  const float* x;        // [m, k]
  const uint8_t* codes;  // [n, kb], kb = ceil(k / 2)
  const float* scales;   // [n, ng]
  const uint8_t* zeros;  // [n, ng]
  float* out;            // [m, n]
  int64_t m, n, k, group;
};

__host__ __device__ inline int64_t groups_of(const Int4Args& a) {
  return (a.k + a.group - 1) / a.group;
}

// Steps of the warp loop: two groups per step.
__host__ __device__ inline int64_t warp_steps(const Int4Args& a) {
  return (groups_of(a) + 1) / 2;
}

// Phase 1: lane `lane`'s partial sum for output (row mi, channel n) at warp step `step`
// (0 when its group lies past the last one).
__host__ __device__ inline float lane_partial(const Int4Args& a, int64_t mi, int64_t n,
                                              int64_t step, int lane) {
  const int64_t g = 2 * step + lane / kPartials;
  const int64_t ng = groups_of(a);
  if (g >= ng) return 0.0f;
  const int p = lane % kPartials;
  const int64_t k0 = g * a.group;
  const int64_t len = a.group < a.k - k0 ? a.group : a.k - k0;
  const uint8_t* row = a.codes + n * ((a.k + 1) / 2);
  const float* x = a.x + mi * a.k;
  const int z = a.zeros[n * ng + g];
  float acc = 0.0f;
  // partial p holds the positions t = 16 j + 2 (p % 8) + p / 8 of the group
  for (int64_t t = 2 * (p % 8) + p / 8; t < len; t += kPartials) {
    const int64_t j = k0 + t;
    const uint8_t b = row[j >> 1];
    const int u = (j & 1) ? (b >> 4) : (b & 0x0F);
    acc = fadd(acc, fmul(float(u - z), x[j]));
  }
  return acc;
}

// S of one group from its 16 partials (even lanes 0-7, then odd lanes 8-15).
__host__ __device__ inline float group_sum(const float* part) {
  float q[8];
  for (int l = 0; l < 8; ++l) q[l] = fadd(part[l], part[8 + l]);
  return fadd(fadd(fadd(q[0], q[4]), fadd(q[2], q[6])), fadd(fadd(q[1], q[5]), fadd(q[3], q[7])));
}

// Phase 2 (lane 0): y after the two groups of warp step `step`, from the 32 lanes' partials.
__host__ __device__ inline float fold_step(const Int4Args& a, int64_t n, int64_t step,
                                           const float* partials, float y) {
  const int64_t ng = groups_of(a);
  for (int h = 0; h < 2; ++h) {
    const int64_t g = 2 * step + h;
    if (g < ng) y = fadd(y, fmul(a.scales[n * ng + g], group_sum(partials + h * kPartials)));
  }
  return y;
}

}  // namespace int4k
}  // namespace cuda
}  // namespace needle
