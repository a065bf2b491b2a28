// Work sharing for the int8 kernels.
//
// The items run on the backend's one OpenMP team, the same team the float32 GEMM and the
// elementwise / strided loops use. A separate pool of helper threads next to that team made
// the two fight on a 2-core machine: after every OpenMP loop (an im2col copy, a dtype
// conversion) the team's idle thread keeps spinning on the second core for a while, so the
// pool's helper either waited for that core or, once asleep, took longer to wake than an
// int8 GEMM of a layer takes; int8 inference ran slower on 2 threads than on 1. Items are
// claimed dynamically (an atomic counter), so a thread that starts late takes fewer items.
#pragma once
#include <cstdint>
#include <functional>

namespace needle {
namespace cpu {

// Calls fn(item) once for every item in [0, items), on the calling thread and up to
// threads - 1 other threads. Returns when every call has returned. Calls made while another
// parallel_items is running (another Python thread, or from inside fn) run on the calling
// thread alone. fn must not throw.
void parallel_items(int64_t items, int threads, const std::function<void(int64_t)>& fn);

}  // namespace cpu
}  // namespace needle
