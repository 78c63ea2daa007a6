// CUDA form of the affine crop kernel (ig3d/warp.h): one block per output row of one crop, one
// thread per output pixel, the per-pixel arithmetic taken from the header the CPU kernel uses.
// Compiled with -fmad=false, so every float64 coordinate expression rounds as on the CPU (which
// is compiled with -ffp-contract=off) and the crops are the CPU's, byte for byte.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "ig3d/cuda_api.h"
#include "ig3d/warp.h"

namespace ig3d {

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw std::runtime_error(std::string("ig3d CUDA: ") + what + " failed: " + cudaGetErrorString(e));
  }
}

__global__ void warp_kernel(const uint8_t* __restrict__ image, int64_t h, int64_t w, int64_t stride,
                            const double* __restrict__ minv, int64_t s, bool zero_border,
                            const float* __restrict__ lut, float* __restrict__ out) {
  const int64_t r = blockIdx.x;  // crop f, row i
  const int64_t f = r / s, i = r % s;
  const double* m = minv + 6 * f;
  __shared__ warp::Map map;
  __shared__ int64_t off[2];
  if (threadIdx.x == 0) {
    map = warp::make_map(m, s, h, w);
    off[0] = warp::row_x(m, map, i);
    off[1] = warp::row_y(m, map, i);
  }
  __syncthreads();
  float* o = out + r * s * 3;
  for (int64_t j = threadIdx.x; j < s; j += blockDim.x)
    warp::sample(image, h, w, stride, zero_border, map, off[0] + warp::col_x(m, map, j),
                 off[1] + warp::col_y(m, map, j), lut, o + 3 * j);
}

}  // namespace

namespace gpu {

void warp_affine_u8_cuda(const uint8_t* image, int64_t h, int64_t w, int64_t row_stride, const double* minv,
                         int64_t n, int64_t out_size, bool zero_border, const float* lut, float* out, int device,
                         uintptr_t stream) {
  require_device(device);
  if (n <= 0 || out_size <= 0) return;
  int prev = -1;
  check(cudaGetDevice(&prev), "cudaGetDevice");
  if (prev != device) check(cudaSetDevice(device), "cudaSetDevice");
  const int64_t rows = n * out_size;
  const unsigned threads = out_size >= 256 ? 256u : static_cast<unsigned>((out_size + 31) / 32 * 32);
  cudaError_t e = cudaSuccess;
  if (rows > 0x7fffffff) {
    e = cudaErrorInvalidConfiguration;
  } else {
    warp_kernel<<<static_cast<unsigned>(rows), threads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
        image, h, w, row_stride, minv, out_size, zero_border, lut, out);
    e = cudaGetLastError();
  }
  if (prev != device) cudaSetDevice(prev);
  check(e, "warp kernel launch");
}

}  // namespace gpu
}  // namespace ig3d
