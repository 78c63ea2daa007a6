// The few CUDA runtime services the Python layer needs for device arrays, behind plain C++
// (defined in csrc/cuda/*.cu, or by csrc/cuda/cuda_stub.cpp, where each one throws the reason CUDA
// is unavailable). Streams are raw cudaStream_t handles as integers: 0 is the default stream,
// 1 cudaStreamLegacy and 2 cudaStreamPerThread, as in __cuda_array_interface__ and DLPack.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ig3d::gpu {

// Throws std::runtime_error naming the reason when `device` cannot be used (no CUDA build, no
// driver, no device, index out of range).
void require_device(int device);

// The device that owns a device pointer, or -1 for host memory. Throws as require_device when
// CUDA is unavailable.
int pointer_device(const void* p);

// Stream-ordered allocation from the device's memory pool (kept, not returned to the driver, so
// steady-state calls do not reach cudaMalloc); freed in order on the same stream.
void* alloc(size_t bytes, int device, uintptr_t stream);
void release(void* p, int device, uintptr_t stream) noexcept;

// Device to host, waiting for `stream` (the copy is ordered after the work queued on it).
void copy_to_host(void* dst, const void* src, size_t bytes, int device, uintptr_t stream);
// Host (pageable) to device, queued on `stream`; `src` may be reused when this returns.
void copy_to_device(void* dst, const void* src, size_t bytes, int device, uintptr_t stream);

// Work queued on `waiter` from now on runs after the work queued so far on `waitee`.
void stream_wait(int device, uintptr_t waiter, uintptr_t waitee);

// warp_affine_u8 (ig3d/warp.h) on device memory: image, minv [n, 2, 3] float64, lut [256] and
// out [n, S, S, 3] all on `device`; one launch on `stream`, no synchronisation.
void warp_affine_u8_cuda(const uint8_t* image, int64_t h, int64_t w, int64_t row_stride, const double* minv,
                         int64_t n, int64_t out_size, bool zero_border, const float* lut, float* out, int device,
                         uintptr_t stream);

}  // namespace ig3d::gpu
