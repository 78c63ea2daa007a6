// A fused head on the host: owns the weights (plain and packed for the CPU kernels), resolves the
// layer graph into a HeadDesc once, and runs the CPU launcher. Knows nothing of Python.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ig3d/fused_head.h"

namespace ig3d {

struct LayerSpec {
  int32_t in = 0, out = 0;
  std::vector<float> weight;  // [out, in] row-major, BatchNorm already folded
  std::vector<float> bias;    // [out]
  int32_t act = kActNone;
  float slope = 0.f;
  int32_t skip_from = -1;     // index j of x_j (x_0 = normalised input) added after activation
};

struct HeadSpec {
  int32_t d_raw = 0;
  std::vector<int32_t> select;   // [d_sel]
  std::vector<float> mean;       // [d_sel]
  std::vector<float> inv_std;    // [d_sel]
  std::vector<LayerSpec> layers;
  int32_t concat_at = -1;        // -1, or l: features2d joins x_l before layer l
  bool concat_2d_first = false;
  int32_t f2d = 0;
  int32_t num_classes = 0;
  int32_t va_index = -1;
  int32_t fusion_mode = kFuseNone;
  std::vector<int32_t> fusion_map;  // [k2d]
  std::vector<float> w2d, w3d;      // [k2d]
  bool bf16 = false;                // store CPU weights as bfloat16 (halves the bytes streamed)
};

namespace cpu {
struct IsaKernels;
}

struct CudaHeadState;  // defined by the CUDA launcher (or its stub)
struct CudaStateDeleter {
  void operator()(CudaHeadState* p) const;  // defined next to CudaHeadState
};

class Head {
 public:
  // Throws std::invalid_argument naming the inconsistency.
  explicit Head(HeadSpec spec);
  ~Head();
  Head(const Head&) = delete;
  Head& operator=(const Head&) = delete;

  const HeadDesc& desc() const { return desc_; }
  const HeadSpec& spec() const { return spec_; }
  int32_t d_raw() const { return desc_.d_raw; }
  int32_t k2d() const { return desc_.k2d; }
  int32_t f2d() const { return desc_.f2d; }
  int32_t out_dim() const { return desc_.out_dim; }
  int32_t num_classes() const { return desc_.num_classes; }
  bool has_va() const { return desc_.va_index >= 0; }
  int64_t macs_per_row() const { return macs_per_row_; }
  const std::vector<LayerDesc>& layer_descs() const { return layers_; }
  const std::vector<float>& weights() const { return weights_; }
  const std::vector<float>& biases() const { return biases_; }
  const char* isa() const;  // instruction set the CPU weights were packed for

  // params3d [B, d_raw]; scores2d [B, k2d] or null; features2d [B, f2d] (required iff f2d > 0).
  // Outputs: probs/logits [B, C], va [B, 2] (when the head has VA), out3d [B, O].
  // Runs on up to `threads` threads (<= 0: all); small problems stay on the calling thread.
  void forward_cpu(const float* params3d, const float* scores2d, const float* features2d, int64_t B,
                   float* probs, float* logits, float* va, float* out3d, int threads) const;

  // CUDA path: same contract on host pointers; throws std::runtime_error when unavailable.
  void forward_cuda(const float* params3d, const float* scores2d, const float* features2d, int64_t B,
                    float* probs, float* logits, float* va, float* out3d) const;

  // CUDA path on device pointers (all on `device`): one launch on `stream` (a cudaStream_t as an
  // integer), no host copy and no synchronisation. The activation scratch is a workspace owned by
  // the head per device, grown when a larger batch comes and reused after; a call on another stream
  // waits (on the GPU, by an event) for the previous call's use of it.
  void forward_device(const float* params3d, const float* scores2d, const float* features2d, int64_t B,
                      float* probs, float* logits, float* va, float* out3d, int device, uintptr_t stream) const;

 private:
  HeadSpec spec_;
  HeadDesc desc_{};
  std::vector<LayerDesc> layers_;
  std::vector<float> weights_, biases_;        // plain [out, in] per layer, concatenated
  std::vector<std::vector<float>> packed_f_;   // per layer, CPU panels (float)
  std::vector<std::vector<uint16_t>> packed_h_;  // per layer, CPU panels (bf16)
  int64_t macs_per_row_ = 0;
  const cpu::IsaKernels* isa_ = nullptr;
  mutable std::unique_ptr<CudaHeadState, CudaStateDeleter> cuda_;
  friend struct CudaHeadState;
};

// Element-wise late fusion on flat arrays (the math of finish_row, exposed alone).
void fuse_scores(const float* s2d, const float* s3d, float* out, int64_t n, int32_t mode, float w2d,
                 float w3d);

// Run-time facts. cpu_isa() is the instruction set new heads are packed for: the best this CPU
// supports, unless force_cpu_isa() narrowed it (tests use that to cover every path).
const char* cpu_isa();
std::vector<std::string> supported_cpu_isas();
void force_cpu_isa(const std::string& name);  // throws std::invalid_argument if unsupported
int default_threads();
void set_default_threads(int n);
// How many threads a kernel may start for `requested`: 1 in a process forked from one whose
// OpenMP runtime already has a thread team (libgomp's team does not survive fork()).
int team_threads(int requested);
bool cuda_compiled();
int cuda_device_count(std::string* error);

}  // namespace ig3d
