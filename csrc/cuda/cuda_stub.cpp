// Built instead of the CUDA sources when CUDA is off or no nvcc was found: the module still
// imports, reports zero devices, and every CUDA path raises one clear error.
#include <stdexcept>
#include <string>

#include "ig3d/cuda_api.h"
#include "ig3d/head.h"

namespace ig3d {

namespace {
[[noreturn]] void no_cuda() {
  throw std::runtime_error(
      "ig3d: the CUDA path was requested but this build of ig3d has no CUDA support "
      "(reinstall with IG3D_CUDA=ON and nvcc on PATH)");
}
}  // namespace

struct CudaHeadState {};

void CudaStateDeleter::operator()(CudaHeadState* p) const { delete p; }

bool cuda_compiled() { return false; }

int cuda_device_count(std::string* error) {
  if (error) *error = "ig3d was built without CUDA (rebuild with IG3D_CUDA=ON and nvcc on PATH)";
  return 0;
}

void Head::forward_cuda(const float*, const float*, const float*, int64_t, float*, float*, float*,
                        float*) const {
  no_cuda();
}

void Head::forward_device(const float*, const float*, const float*, int64_t, float*, float*, float*, float*, int,
                          uintptr_t) const {
  no_cuda();
}

namespace gpu {
void require_device(int) { no_cuda(); }
int pointer_device(const void*) { no_cuda(); }
void* alloc(size_t, int, uintptr_t) { no_cuda(); }
void release(void*, int, uintptr_t) noexcept {}
void copy_to_host(void*, const void*, size_t, int, uintptr_t) { no_cuda(); }
void copy_to_device(void*, const void*, size_t, int, uintptr_t) { no_cuda(); }
void stream_wait(int, uintptr_t, uintptr_t) { no_cuda(); }
void warp_affine_u8_cuda(const uint8_t*, int64_t, int64_t, int64_t, const double*, int64_t, int64_t, bool,
                         const float*, float*, int, uintptr_t) {
  no_cuda();
}
}  // namespace gpu

}  // namespace ig3d
