// CPU GEMM kernels of the fused head, compiled once per instruction set (AVX-512, AVX2, baseline)
// from the same source, and picked at run time. No -march=native: a shipped build runs on any
// x86-64 and uses the widest vectors the machine has.
#pragma once

#include <cstdint>

#include "ig3d/fused_head.h"

namespace ig3d {
namespace cpu {

// One layer's GEMM on a tile: Y[r, cols of block cb] = epilogue(X[r, :] . W[cols, :]^T + b).
struct GemmArgs {
  const void* packed;   // W in panels of `nr` output columns: panel cb is [in][nr] (zero-padded)
  bool bf16;            // packed holds bfloat16 (uint16) instead of float
  const float* bias;    // [out]
  LayerDesc layer;
  float* scratch;       // [B, ld] activation rows; X, Y and the skip source all live here
  int64_t ld;           // floats per scratch row
};

struct IsaKernels {
  const char* name;     // "avx512", "avx2", "sse2" / "generic"
  int nr;               // panel width (output columns per block)
  int mr;               // rows per register tile
  // Writes W [out, in] (row-major, float) as panels; dst holds ceil(out/nr)*nr*in elements.
  void (*pack)(const float* w, int out, int in, void* dst, bool bf16);
  // Rows [row_begin, row_end) of column block cb.
  void (*gemm_tile)(const GemmArgs& a, int cb, int row_begin, int row_end);
};

// Defined once per instruction-set build of fused_head_cpu_isa.cpp.
const IsaKernels& kernels_avx512();
const IsaKernels& kernels_avx2();
const IsaKernels& kernels_generic();

// The best set this CPU supports (decided once).
const IsaKernels& best_kernels();

}  // namespace cpu
}  // namespace ig3d
