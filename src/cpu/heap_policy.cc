// Keeps freed large buffers inside the process instead of handing them back to the kernel.
//
// glibc's defaults return a freed block of more than ~128 KB to the kernel (munmap, or trimming
// the top of the heap), so the next array of that size is fresh memory and every 4 KB page of
// it faults on first touch: a float32 forward pass of the MNIST CNN at batch 128 took ~8,000
// page faults and spent half its time in the kernel, and more with two threads, whose faults
// contend for the same page-table lock. Network layers allocate the same sizes batch after
// batch, so reusing freed heap memory removes the faults. Blocks above kMmapThreshold still
// get their own mapping (returned on free); the heap keeps at most kTrimThreshold of free
// memory at its top. This is process-wide; set NEEDLE_KEEP_MALLOC_DEFAULTS=1 to leave glibc's
// settings alone (e.g. when embedding needle in a program that tunes malloc itself).
#include <cstdlib>  // defines __GLIBC__ on glibc systems

#if defined(__GLIBC__)
#include <malloc.h>

namespace needle {
namespace cpu {
namespace {

constexpr int kMmapThreshold = 32 << 20;   // the largest value mallopt accepts on 64-bit
constexpr int kTrimThreshold = 256 << 20;

struct HeapPolicy {
  HeapPolicy() {
    const char* keep = std::getenv("NEEDLE_KEEP_MALLOC_DEFAULTS");
    if (keep != nullptr && keep[0] != '\0' && keep[0] != '0') return;
    mallopt(M_MMAP_THRESHOLD, kMmapThreshold);
    mallopt(M_TRIM_THRESHOLD, kTrimThreshold);
  }
};

const HeapPolicy heap_policy;  // applied when the backend module is loaded

}  // namespace
}  // namespace cpu
}  // namespace needle
#endif
