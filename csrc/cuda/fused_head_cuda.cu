// CUDA launcher of the fused head: normalisation, every MLP layer, late fusion and softmax in ONE
// kernel launch. Each block owns ROWS batch rows; a warp computes one output neuron for all of them,
// so a weight row is read once per block, coalesced, and reused ROWS times. The element math
// (normalise_row, layer_epilogue, finish_row) is the same header the CPU path uses.
//
// Device arrays (Head::forward_device) run on the caller's stream with no host round trip and no
// synchronisation: the weights are uploaded once per device, the activation scratch is a workspace
// per head and device (grown, never shrunk, freed with the head), and an event orders calls that
// come on different streams. Host arrays (Head::forward_cuda) are staged through the device's
// stream-ordered memory pool and run the same launcher.
//
// The runtime is linked statically, so the module imports on machines with no driver; every CUDA
// call is checked and turned into one std::runtime_error.
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "ig3d/cuda_api.h"
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

cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

// Makes `device` current for its lifetime and restores the caller's device after.
struct DeviceGuard {
  int prev = -1;
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&prev), "cudaGetDevice");
    if (prev != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    int now = -1;
    if (prev >= 0 && cudaGetDevice(&now) == cudaSuccess && now != prev) cudaSetDevice(prev);
  }
};

// Whether `device` allocates from a stream-ordered pool (set up on first use: the pool keeps what
// it gets, so steady-state allocations never reach the driver).
bool uses_pool(int device) {
  static std::mutex m;
  static std::map<int, bool> known;
  std::lock_guard<std::mutex> lock(m);
  auto it = known.find(device);
  if (it != known.end()) return it->second;
  int supported = 0;
  check(cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, device), "cudaDeviceGetAttribute");
  if (supported) {
    cudaMemPool_t pool;
    check(cudaDeviceGetDefaultMemPool(&pool, device), "cudaDeviceGetDefaultMemPool");
    uint64_t keep = UINT64_MAX;
    check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep), "cudaMemPoolSetAttribute");
  }
  known[device] = supported != 0;
  return supported != 0;
}

}  // namespace

// One device's copies of a head's weights and descriptor arrays, and its activation workspace.
struct DeviceHeadState {
  std::vector<void*> owned;
  HeadDesc desc{};
  float* W = nullptr;
  float* bias = nullptr;
  float* workspace = nullptr;
  size_t capacity = 0;  // floats
  cudaEvent_t last_use = nullptr;
  uintptr_t last_stream = 0;
  bool used = false;

  explicit DeviceHeadState(const Head& head) {
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
      check(cudaEventCreateWithFlags(&last_use, cudaEventDisableTiming), "cudaEventCreate");
    } catch (...) {
      release();
      throw;
    }
  }
  ~DeviceHeadState() { release(); }
  void release() {
    if (workspace) cudaFree(workspace);
    workspace = nullptr;
    for (void* p : owned) cudaFree(p);
    owned.clear();
    if (last_use) cudaEventDestroy(last_use);
    last_use = nullptr;
  }
};

// Every device's state of one head.
struct CudaHeadState {
  std::mutex mutex;
  std::map<int, std::unique_ptr<DeviceHeadState>> devices;
  ~CudaHeadState() {
    for (auto& kv : devices) {
      int prev = -1;
      if (cudaGetDevice(&prev) != cudaSuccess) break;  // the driver is gone (process exit)
      cudaSetDevice(kv.first);
      kv.second.reset();
      cudaSetDevice(prev);
    }
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

namespace gpu {

void require_device(int device) {
  std::string why;
  const int n = cuda_device_count(&why);
  if (n == 0)
    throw std::runtime_error("ig3d: the CUDA path was requested but no CUDA device is available" +
                             (why.empty() ? std::string() : " (" + why + ")"));
  if (device < 0 || device >= n)
    throw std::runtime_error("ig3d: CUDA device " + std::to_string(device) + " does not exist (this machine has " +
                             std::to_string(n) + ")");
}

int pointer_device(const void* p) {
  require_device(0);
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return (a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged) ? a.device : -1;
}

void* alloc(size_t bytes, int device, uintptr_t stream) {
  require_device(device);
  DeviceGuard g(device);
  void* p = nullptr;
  bytes = bytes ? bytes : 1;
  if (uses_pool(device))
    check(cudaMallocAsync(&p, bytes, as_stream(stream)), "cudaMallocAsync");
  else
    check(cudaMalloc(&p, bytes), "cudaMalloc");
  return p;
}

void release(void* p, int device, uintptr_t stream) noexcept {
  if (!p) return;
  int prev = -1;
  if (cudaGetDevice(&prev) != cudaSuccess) {
    cudaGetLastError();
    return;
  }
  cudaSetDevice(device);
  bool pool = false;
  try {
    pool = uses_pool(device);
  } catch (...) {
  }
  if (pool ? cudaFreeAsync(p, as_stream(stream)) != cudaSuccess : cudaFree(p) != cudaSuccess) cudaGetLastError();
  cudaSetDevice(prev);
}

void copy_to_host(void* dst, const void* src, size_t bytes, int device, uintptr_t stream) {
  require_device(device);
  DeviceGuard g(device);
  if (bytes) check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, as_stream(stream)), "cudaMemcpyAsync");
  check(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize");
}

void copy_to_device(void* dst, const void* src, size_t bytes, int device, uintptr_t stream) {
  require_device(device);
  DeviceGuard g(device);
  if (bytes) check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, as_stream(stream)), "cudaMemcpyAsync");
}

void stream_wait(int device, uintptr_t waiter, uintptr_t waitee) {
  require_device(device);
  if (waiter == waitee) return;
  DeviceGuard g(device);
  cudaEvent_t e;
  check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
  cudaError_t r = cudaEventRecord(e, as_stream(waitee));
  if (r == cudaSuccess) r = cudaStreamWaitEvent(as_stream(waiter), e, 0);
  cudaEventDestroy(e);  // released once the wait is satisfied
  check(r, "cudaStreamWaitEvent");
}

}  // namespace gpu

void Head::forward_device(const float* params3d, const float* scores2d, const float* features2d, int64_t B,
                          float* probs, float* logits, float* va, float* out3d, int device,
                          uintptr_t stream) const {
  gpu::require_device(device);
  if (B <= 0) return;
  DeviceGuard g(device);
  {
    static std::mutex m;
    std::lock_guard<std::mutex> lock(m);
    if (!cuda_) cuda_.reset(new CudaHeadState());
  }
  std::lock_guard<std::mutex> lock(cuda_->mutex);
  std::unique_ptr<DeviceHeadState>& slot = cuda_->devices[device];
  if (!slot) slot.reset(new DeviceHeadState(*this));
  DeviceHeadState& st = *slot;
  const HeadDesc& h = st.desc;
  const int64_t O = h.out_dim;
  const size_t need = static_cast<size_t>(B) * static_cast<size_t>(h.scratch_width + O);
  if (need > st.capacity) {  // grow (first calls only): the old workspace may still be in use
    if (st.workspace) {
      check(cudaEventSynchronize(st.last_use), "cudaEventSynchronize");
      check(cudaFree(st.workspace), "cudaFree");
      st.workspace = nullptr;
      st.capacity = 0;
    }
    const size_t cap = need > 2 * st.capacity ? need : 2 * st.capacity;
    check(cudaMalloc(&st.workspace, cap * sizeof(float)), "cudaMalloc (workspace)");
    st.capacity = cap;
  }
  const cudaStream_t s = as_stream(stream);
  if (st.used && st.last_stream != stream) check(cudaStreamWaitEvent(s, st.last_use, 0), "cudaStreamWaitEvent");
  float* scratch = st.workspace;
  float* fused = st.workspace + static_cast<size_t>(B) * h.scratch_width;
  const unsigned grid = static_cast<unsigned>((B + kRows - 1) / kRows);
  fused_head_kernel<<<grid, kThreads, 0, s>>>(h, st.W, st.bias, params3d, scores2d, features2d, scratch, fused,
                                                probs, logits, va, out3d, B);
  check(cudaGetLastError(), "kernel launch");
  check(cudaEventRecord(st.last_use, s), "cudaEventRecord");
  st.last_stream = stream;
  st.used = true;
}

void Head::forward_cuda(const float* params3d, const float* scores2d, const float* features2d, int64_t B,
                        float* probs, float* logits, float* va, float* out3d) const {
  gpu::require_device(0);
  if (B <= 0) return;
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  const HeadDesc& h = desc_;
  const int64_t O = h.out_dim, C = h.num_classes;
  // One staging block: inputs then outputs, each part 256-byte aligned.
  auto round = [](int64_t n) { return (n * int64_t(sizeof(float)) + 255) / 256 * 256; };
  const int64_t sizes[7] = {B * h.d_raw, scores2d ? B * h.k2d : 0, features2d ? B * h.f2d : 0,
                            B * C, B * C, va ? B * 2 : 0, B * O};
  int64_t offs[7], total = 0;
  for (int k = 0; k < 7; ++k) {
    offs[k] = total;
    total += round(sizes[k]);
  }
  const uintptr_t stream = 0;
  char* block = static_cast<char*>(gpu::alloc(static_cast<size_t>(total), device, stream));
  struct Release {
    void* p;
    int d;
    ~Release() { gpu::release(p, d, 0); }
  } rel{block, device};
  auto at = [&](int k) { return reinterpret_cast<float*>(block + offs[k]); };
  const void* host_in[3] = {params3d, scores2d, features2d};
  for (int k = 0; k < 3; ++k)
    if (host_in[k]) gpu::copy_to_device(at(k), host_in[k], sizes[k] * sizeof(float), device, stream);
  forward_device(at(0), scores2d ? at(1) : nullptr, features2d ? at(2) : nullptr, B, at(3), at(4),
                 va ? at(5) : nullptr, at(6), device, stream);
  float* host_out[4] = {probs, logits, va, out3d};
  for (int k = 0; k < 4; ++k)
    if (host_out[k] && sizes[3 + k])
      gpu::copy_to_host(host_out[k], at(3 + k), sizes[3 + k] * sizeof(float), device, stream);
}

}  // namespace ig3d
