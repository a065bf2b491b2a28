// Stand-in for the CUDA toolkit's cuda_runtime.h, used only when the CUDA host emulation
// (emulate.cu + emulate_host.cc, CMake option NEEDLE_EMULATION_HOST) is compiled by the host
// compiler on a machine without the toolkit (a laptop, Colab's CPU runtime, a grading box).
// The emulation runs the kernels' __host__ __device__ tile phases on the CPU and calls no CUDA
// API, so this header only has to let cuda_array.cuh compile: the qualifiers become nothing and
// the runtime calls are declared, never defined. A host build that did call one fails to load
// with "undefined symbol: cuda...", naming it.
#pragma once

#include <cstddef>

#ifndef __host__
#define __host__
#endif
#ifndef __device__
#define __device__
#endif
#ifndef __forceinline__
#define __forceinline__ inline __attribute__((always_inline))
#endif

enum cudaError_t { cudaSuccess = 0, cudaErrorNoDevice = 100 };

cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaGetLastError();
const char* cudaGetErrorName(cudaError_t err);
const char* cudaGetErrorString(cudaError_t err);
cudaError_t cudaMalloc(void** ptr, size_t bytes);
cudaError_t cudaFree(void* ptr);
