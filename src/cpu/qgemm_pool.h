// A small work-sharing pool for the int8 kernels.
//
// Why not an OpenMP team: an OpenMP parallel region ends at a barrier that waits for every
// thread of the team, so on a busy machine (2 shared cores) a helper thread that is not
// scheduled for a few milliseconds stalls the whole call. Here the calling thread works
// through the items itself and helpers join only when they get a CPU; the caller waits only
// for items a helper has already claimed. Worst case: the one-thread time.
#pragma once
#include <cstdint>
#include <functional>

namespace needle {
namespace cpu {

// Calls fn(item) once for every item in [0, items), on the calling thread and up to
// threads - 1 helper threads. Returns when every call has returned. Calls made while another
// parallel_items is running (another Python thread, or from inside fn) run on the calling
// thread alone. fn must not throw.
void parallel_items(int64_t items, int threads, const std::function<void(int64_t)>& fn);

}  // namespace cpu
}  // namespace needle
