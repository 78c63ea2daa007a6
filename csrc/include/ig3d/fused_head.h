// ig3d fused head: the math, written once for host and device.
//
// A fused head turns a batch of raw 3D face parameters (and, optionally, a 2D network's scores and
// feature vector) into fused class probabilities, logits and valence/arousal in one call:
//
//   x0  = (params3d[:, select] - mean) * inv_std                      normalisation     [B, Dsel]
//   x_{l+1} = act_l(W_l x_l + b_l) (+ x_{skip_l})                     MLP, BN folded    [B, O_l]
//   (intermediate fusion: after `concat_at` layers, x is concatenated with features2d, 3D or 2D first)
//   out3d = x_L                                                        3D branch output  [B, O]
//   fused = out3d; fused[map[k]] = combine(scores2d[k], out3d[map[k]])  late fusion       [B, O]
//   logits = fused[:, :C]; probs = softmax(logits); va = fused[:, va : va + 2]
//
// Everything here is plain C++ on raw pointers: no Python, no torch. Under nvcc the functions are
// __host__ __device__, so the CPU launcher and the CUDA kernel share the exact same element math.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define IG3D_HD __host__ __device__ __forceinline__
#else
#define IG3D_HD inline
#endif

namespace ig3d {

enum Activation : int32_t {
  kActNone = 0,
  kActRelu = 1,
  kActLeakyRelu = 2,
  kActTanh = 3,
  kActSigmoid = 4,
};

enum FusionMode : int32_t {
  kFuseNone = 0,      // no late fusion: fused = out3d
  kFuseMax = 1,       // element-wise max(s2d, s3d)
  kFuseMean = 2,      // (s2d + s3d) / 2
  kFuseMin = 3,       // element-wise min(s2d, s3d)
  kFuseWeighted = 4,  // w2d * s2d + w3d * s3d
};

// One Linear layer (BatchNorm already folded into W and b).
// Offsets into a scratch row are resolved when the head is built, so launchers never reason about
// the layer graph: x_0 (the normalised input) sits at 0, x_{l+1} at `out_offset` of layer l, and
// the concatenated [3D, 2D] vector of intermediate fusion at HeadDesc::concat_offset.
struct LayerDesc {
  int32_t in;           // input width
  int32_t out;          // output width
  int32_t act;          // Activation
  float slope;          // negative slope for kActLeakyRelu
  int32_t in_offset;    // where this layer's input starts inside a scratch row
  int32_t out_offset;   // where its output x_{l+1} starts inside a scratch row
  int32_t skip_offset;  // -1, or where an earlier activation of width `out` starts: it is added
                        // after the activation (residual blocks)
  int64_t w_offset;     // offset of W [out, in] (row-major) in the head's weight storage
  int64_t b_offset;     // offset of b [out] in the head's bias storage
};

// Everything a launcher needs to run a head, as plain pointers and sizes (the only thing the
// kernels see). The pointed-to arrays live on the host for the CPU path and on the device for
// the CUDA path.
struct HeadDesc {
  int32_t d_raw;              // width of params3d
  int32_t d_sel;              // number of selected/normalised inputs
  const int32_t* select;      // [d_sel] indices into params3d
  const float* mean;          // [d_sel]
  const float* inv_std;       // [d_sel]

  int32_t num_layers;
  const LayerDesc* layers;    // [num_layers]
  int32_t concat_at;          // -1: no 2D features; else features2d is concatenated to x_{concat_at}
  int32_t concat_2d_first;    // 1: [f2d, x], 0: [x, f2d]
  int32_t f2d;                // width of features2d (0 when concat_at == -1)
  int32_t concat_offset;      // offset of the concatenated vector inside one scratch row
  int32_t scratch_width;      // floats per row of activation scratch (all x_l, plus the concat)

  int32_t out_dim;            // O: width of the last layer = out3d
  int32_t num_classes;        // C: out3d[:, :C] are class logits (0: regression-only head)
  int32_t va_index;           // -1, or index of valence; arousal is va_index + 1

  int32_t fusion_mode;        // FusionMode
  int32_t k2d;                // width of scores2d (0: none)
  const int32_t* fusion_map;  // [k2d] output index that 2D score k fuses with
  const float* w2d;           // [k2d] weights of the 2D scores (kFuseWeighted)
  const float* w3d;           // [k2d] weights of the 3D outputs (kFuseWeighted)
};

IG3D_HD float apply_activation(float v, int32_t act, float slope) {
  switch (act) {
    case kActRelu: return v > 0.f ? v : 0.f;
    case kActLeakyRelu: return v > 0.f ? v : v * slope;
    case kActTanh: return tanhf(v);
    case kActSigmoid: return 1.f / (1.f + expf(-v));
    default: return v;
  }
}

IG3D_HD float combine_scores(float s2d, float s3d, int32_t mode, float w2d, float w3d) {
  switch (mode) {
    case kFuseMax: return s2d > s3d ? s2d : s3d;
    case kFuseMin: return s2d < s3d ? s2d : s3d;
    case kFuseMean: return 0.5f * (s2d + s3d);
    case kFuseWeighted: return w2d * s2d + w3d * s3d;
    default: return s3d;
  }
}

// Step 1 for one row: x[i] = (raw[select[i]] - mean[i]) * inv_std[i].
IG3D_HD void normalise_row(const HeadDesc& h, const float* raw, float* x) {
  for (int32_t i = 0; i < h.d_sel; ++i) x[i] = (raw[h.select[i]] - h.mean[i]) * h.inv_std[i];
}

// Bias, activation and residual for one output element of layer l.
IG3D_HD float layer_epilogue(const LayerDesc& L, float acc, float bias, const float* skip) {
  float v = apply_activation(acc + bias, L.act, L.slope);
  return skip ? v + *skip : v;
}

// Step 3 for one row: late fusion of out3d with scores2d, softmax over the class part, VA.
// `fused` is [O] scratch; logits [C], probs [C], va [2] may be null when not wanted.
IG3D_HD void finish_row(const HeadDesc& h, const float* out3d, const float* s2d, float* fused,
                        float* logits, float* probs, float* va) {
  for (int32_t o = 0; o < h.out_dim; ++o) fused[o] = out3d[o];
  if (s2d && h.fusion_mode != kFuseNone) {
    for (int32_t k = 0; k < h.k2d; ++k) {
      const int32_t o = h.fusion_map[k];
      fused[o] = combine_scores(s2d[k], out3d[o], h.fusion_mode, h.w2d[k], h.w3d[k]);
    }
  }
  if (h.num_classes > 0) {
    float m = fused[0];
    for (int32_t c = 1; c < h.num_classes; ++c) m = fused[c] > m ? fused[c] : m;
    float z = 0.f;
    for (int32_t c = 0; c < h.num_classes; ++c) {
      const float e = expf(fused[c] - m);
      probs[c] = e;
      z += e;
    }
    const float inv = 1.f / z;
    for (int32_t c = 0; c < h.num_classes; ++c) {
      probs[c] *= inv;
      logits[c] = fused[c];
    }
  }
  if (h.va_index >= 0) {
    va[0] = fused[h.va_index];
    va[1] = fused[h.va_index + 1];
  }
}

}  // namespace ig3d
