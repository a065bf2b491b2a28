// Work sharing for the int8 kernels.
//
// The items run on the calling thread and on helper threads of the kit's own pool, which
// sleep (no spinning) between calls. Items are claimed dynamically (an atomic counter), so a
// thread that starts late takes fewer items, and a call never waits for a helper that has not
// started: on a 2-core machine whose other core is busy, a second thread therefore costs at
// most a wake-up, never a time slice of the busy core. (The OpenMP team of the float32 GEMM
// and the elementwise loops waits passively too: needle sets OMP_WAIT_POLICY=PASSIVE unless
// the user chose a policy; a spinning team starved a second pool on such a machine.)
#pragma once
#include <cstdint>
#include <functional>

namespace needle {
namespace cpu {

// Calls fn(item) once for every item in [0, items), on the calling thread and up to
// threads - 1 helper threads. Returns when every call has returned. Calls made while another
// parallel_items is running (another Python thread, or from inside fn or an OpenMP region)
// run on the calling thread alone. fn must not throw.
void parallel_items(int64_t items, int threads, const std::function<void(int64_t)>& fn);

}  // namespace cpu
}  // namespace needle
