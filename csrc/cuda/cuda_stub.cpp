// Built instead of fused_head_cuda.cu when CUDA is off or no nvcc was found: the module still
// imports, reports zero devices, and the CUDA path raises one clear error.
#include <stdexcept>
#include <string>

#include "ig3d/head.h"

namespace ig3d {

struct CudaHeadState {};

void CudaStateDeleter::operator()(CudaHeadState* p) const { delete p; }

bool cuda_compiled() { return false; }

int cuda_device_count(std::string* error) {
  if (error) *error = "ig3d was built without CUDA (rebuild with IG3D_CUDA=ON and nvcc on PATH)";
  return 0;
}

void Head::forward_cuda(const float*, const float*, const float*, int64_t, float*, float*, float*,
                        float*) const {
  throw std::runtime_error(
      "ig3d: the CUDA path was requested but this build of ig3d has no CUDA support "
      "(reinstall with IG3D_CUDA=ON and nvcc on PATH)");
}

}  // namespace ig3d
