// CUDA launcher of the fused head: normalisation, every MLP layer, late fusion and softmax in ONE
// kernel launch. Each block owns ROWS batch rows; a warp computes one output neuron for all of them,
// so a weight row is read once per block, coalesced, and reused ROWS times. The element math
// (normalise_row, layer_epilogue, finish_row) is the same header the CPU path uses.
//
// The runtime is linked statically, so the module imports on machines with no driver; every CUDA
// call is checked and turned into one std::runtime_error.
#include <cuda_runtime.h>

#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "ig3d/fused_head.h"
#include "ig3d/head.h"

namespace ig3d {

namespace {

constexpr int kRows = 4;       // batch rows per block
constexpr int kThreads = 256;  // 8 warps

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear sticky-free errors so a later call can succeed
    throw std::runtime_error(std::string("ig3d CUDA: ") + what + " failed: " + cudaGetErrorString(e));
  }
}

__global__ void fused_head_kernel(HeadDesc h, const float* __restrict__ W, const float* __restrict__ bias,
                                  const float* __restrict__ p3d, const float* __restrict__ s2d,
                                  const float* __restrict__ f2d, float* scratch, float* fused, float* probs,
                                  float* logits, float* va, float* out3d, int64_t B) {
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int nr = static_cast<int>(B - r0 < kRows ? B - r0 : kRows);
  const int64_t ld = h.scratch_width;
  float* sc = scratch + r0 * ld;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;

  // 1. normalisation: one thread per row (d_sel is at most a few hundred).
  if (threadIdx.x < nr) normalise_row(h, p3d + (r0 + threadIdx.x) * h.d_raw, sc + threadIdx.x * ld);
  __syncthreads();

  // 2. the MLP
  for (int l = 0; l < h.num_layers; ++l) {
    const LayerDesc L = h.layers[l];
    if (l == h.concat_at) {
      const int xw = L.in - h.f2d;
      const int x_src = l == 0 ? 0 : h.layers[l - 1].out_offset;
      for (int idx = threadIdx.x; idx < nr * L.in; idx += blockDim.x) {
        const int r = idx / L.in, i = idx % L.in;
        const float* x = sc + r * ld + x_src;
        const float* f = f2d + (r0 + r) * h.f2d;
        float v;
        if (h.concat_2d_first)
          v = i < h.f2d ? f[i] : x[i - h.f2d];
        else
          v = i < xw ? x[i] : f[i - xw];
        sc[r * ld + h.concat_offset + i] = v;
      }
      __syncthreads();
    }
    const float* w_layer = W + L.w_offset;
    for (int o = warp; o < L.out; o += nwarps) {
      const float* w = w_layer + static_cast<int64_t>(o) * L.in;
      float acc[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) acc[r] = 0.f;
      for (int i = lane; i < L.in; i += 32) {
        const float wv = __ldg(w + i);
#pragma unroll
        for (int r = 0; r < kRows; ++r)
          if (r < nr) acc[r] += wv * sc[r * ld + L.in_offset + i];
      }
#pragma unroll
      for (int r = 0; r < kRows; ++r)
        for (int s = 16; s > 0; s >>= 1) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], s);
      if (lane == 0) {
        for (int r = 0; r < nr; ++r) {
          const float* skip = L.skip_offset >= 0 ? sc + r * ld + L.skip_offset + o : nullptr;
          sc[r * ld + L.out_offset + o] = layer_epilogue(L, acc[r], bias[L.b_offset + o], skip);
        }
      }
    }
    __syncthreads();
  }

  // 3. late fusion, softmax, VA: one thread per row.
  if (threadIdx.x < nr) {
    const int64_t row = r0 + threadIdx.x;
    const float* o3 = sc + threadIdx.x * ld + h.layers[h.num_layers - 1].out_offset;
    for (int o = 0; o < h.out_dim; ++o) out3d[row * h.out_dim + o] = o3[o];
    const int C = h.num_classes;
    finish_row(h, o3, s2d ? s2d + row * h.k2d : nullptr, fused + row * h.out_dim, logits + row * C,
               probs + row * C, va ? va + row * 2 : nullptr);
  }
}

template <typename T>
T* upload(const std::vector<T>& v, std::vector<void*>& owned) {
  void* p = nullptr;
  const size_t n = (v.empty() ? 1 : v.size()) * sizeof(T);
  check(cudaMalloc(&p, n), "cudaMalloc");
  owned.push_back(p);
  if (!v.empty()) check(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy");
  return static_cast<T*>(p);
}

}  // namespace

// Device copies of one head's weights and descriptor arrays, made on first use.
struct CudaHeadState {
  std::vector<void*> owned;
  HeadDesc desc{};
  float* W = nullptr;
  float* bias = nullptr;
  int device = -1;

  explicit CudaHeadState(const Head& head) {
    check(cudaGetDevice(&device), "cudaGetDevice");
    const HeadSpec& s = head.spec();
    desc = head.desc();
    try {
      W = upload(head.weights(), owned);
      bias = upload(head.biases(), owned);
      desc.select = upload(s.select, owned);
      desc.mean = upload(s.mean, owned);
      desc.inv_std = upload(s.inv_std, owned);
      desc.layers = upload(head.layer_descs(), owned);
      desc.fusion_map = upload(s.fusion_map, owned);
      desc.w2d = upload(s.w2d, owned);
      desc.w3d = upload(s.w3d, owned);
    } catch (...) {
      release();
      throw;
    }
  }
  ~CudaHeadState() { release(); }
  void release() {
    for (void* p : owned) cudaFree(p);
    owned.clear();
  }
};

void CudaStateDeleter::operator()(CudaHeadState* p) const { delete p; }

bool cuda_compiled() { return true; }

int cuda_device_count(std::string* error) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    if (error) *error = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
    return 0;
  }
  return n;
}

void Head::forward_cuda(const float* params3d, const float* scores2d, const float* features2d, int64_t B,
                        float* probs, float* logits, float* va, float* out3d) const {
  std::string why;
  if (cuda_device_count(&why) == 0)
    throw std::runtime_error("ig3d: the CUDA path was requested but no CUDA device is available" +
                             (why.empty() ? std::string() : " (" + why + ")"));
  if (B <= 0) return;
  {
    static std::mutex m;
    std::lock_guard<std::mutex> lock(m);
    if (!cuda_) cuda_.reset(new CudaHeadState(*this));
  }
  const HeadDesc& h = cuda_->desc;
  const int64_t O = h.out_dim, C = h.num_classes;
  std::vector<void*> owned;
  struct Guard {
    std::vector<void*>& v;
    ~Guard() {
      for (void* p : v) cudaFree(p);
    }
  } guard{owned};
  auto alloc = [&](int64_t n) {
    void* p = nullptr;
    check(cudaMalloc(&p, (n > 0 ? n : 1) * sizeof(float)), "cudaMalloc");
    owned.push_back(p);
    return static_cast<float*>(p);
  };
  auto put = [&](const float* src, int64_t n) {
    float* d = alloc(n);
    check(cudaMemcpy(d, src, n * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy to device");
    return d;
  };
  const float* d_p = put(params3d, B * h.d_raw);
  const float* d_s = scores2d ? put(scores2d, B * h.k2d) : nullptr;
  const float* d_f = features2d ? put(features2d, B * h.f2d) : nullptr;
  float* d_scratch = alloc(B * h.scratch_width);
  float* d_fused = alloc(B * O);
  float* d_probs = alloc(B * C);
  float* d_logits = alloc(B * C);
  float* d_va = va ? alloc(B * 2) : nullptr;
  float* d_out3d = alloc(B * O);

  const unsigned grid = static_cast<unsigned>((B + kRows - 1) / kRows);
  fused_head_kernel<<<grid, kThreads>>>(h, cuda_->W, cuda_->bias, d_p, d_s, d_f, d_scratch, d_fused, d_probs,
                                        d_logits, d_va, d_out3d, B);
  check(cudaGetLastError(), "kernel launch");
  check(cudaDeviceSynchronize(), "kernel");
  check(cudaMemcpy(out3d, d_out3d, B * O * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy to host");
  if (C > 0) {
    check(cudaMemcpy(probs, d_probs, B * C * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy to host");
    check(cudaMemcpy(logits, d_logits, B * C * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy to host");
  }
  if (va) check(cudaMemcpy(va, d_va, B * 2 * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy to host");
}

}  // namespace ig3d
