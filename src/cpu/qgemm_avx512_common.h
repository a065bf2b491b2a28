// Included first by the AVX-512 int8 kernel files (after qgemm_internal.h, x86-64 only).
#pragma once
#include <immintrin.h>

// Vector-typed helpers stay inside their file; the ABI note about them does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
// GCC 12's AVX-512 headers build 256-bit halves from _mm256_undefined_si256(), which -O3 -Wall
// reports as maybe-uninitialized (a false positive in the library header).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
