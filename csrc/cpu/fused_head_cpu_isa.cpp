// The fused head's GEMM, written once with GCC/Clang vector extensions and compiled three times
// (CMake passes -DIG3D_ISA_AVX512 / -DIG3D_ISA_AVX2 / nothing, each with matching -m flags), so the
// compiler emits zmm, ymm or xmm code from the same source.
//
// Layout: W is packed at load time into panels of NR = 2 vectors of output columns, [in][NR] each, so
// the inner loop streams one panel contiguously (batch 1 is a pure weight stream) while a tile of
// MR batch rows is broadcast against it (register-blocked GEMM for larger batches).
#include <algorithm>
#include <cstring>

#include "ig3d/cpu_kernels.h"

#if defined(IG3D_ISA_AVX512)
#define IG3D_VL 16
#ifndef IG3D_MR
#define IG3D_MR 6
#endif
#ifndef IG3D_NV
#define IG3D_NV 4
#endif
#define IG3D_ENTRY kernels_avx512
#define IG3D_NAME "avx512"
#elif defined(IG3D_ISA_AVX2)
#define IG3D_VL 8
#define IG3D_MR 4
#define IG3D_NV 2
#define IG3D_ENTRY kernels_avx2
#define IG3D_NAME "avx2"
#else
#define IG3D_VL 4
#define IG3D_MR 4
#define IG3D_NV 2
#define IG3D_ENTRY kernels_generic
#if defined(__x86_64__) || defined(_M_X64)
#define IG3D_NAME "sse2"
#else
#define IG3D_NAME "generic"
#endif
#endif

namespace ig3d {
namespace cpu {
namespace {

constexpr int VL = IG3D_VL;
constexpr int NV = IG3D_NV;  // vectors of output columns per tile
constexpr int NR = NV * VL;
constexpr int MR = IG3D_MR;

// aligned(4)/aligned(2): loads through these types are unaligned loads.
typedef float vf __attribute__((vector_size(VL * 4)));
typedef float vf_u __attribute__((vector_size(VL * 4), aligned(4)));
typedef uint16_t vh_u __attribute__((vector_size(VL * 2), aligned(2)));
typedef uint32_t vu __attribute__((vector_size(VL * 4)));

inline vf load_f(const float* p) { return *reinterpret_cast<const vf_u*>(p); }

// bfloat16 -> float is a 16-bit left shift of the bit pattern.
inline vf load_h(const uint16_t* p) {
  vu u = __builtin_convertvector(*reinterpret_cast<const vh_u*>(p), vu) << 16;
  vf f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline uint16_t to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) return static_cast<uint16_t>(u >> 16);  // inf/nan
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}

void pack(const float* w, int out, int in, void* dst, bool bf16) {
  const int nb = (out + NR - 1) / NR;
  for (int cb = 0; cb < nb; ++cb) {
    for (int k = 0; k < in; ++k) {
      for (int j = 0; j < NR; ++j) {
        const int o = cb * NR + j;
        const float v = o < out ? w[static_cast<int64_t>(o) * in + k] : 0.f;
        const int64_t idx = (static_cast<int64_t>(cb) * in + k) * NR + j;
        if (bf16)
          static_cast<uint16_t*>(dst)[idx] = to_bf16(v);
        else
          static_cast<float*>(dst)[idx] = v;
      }
    }
  }
}

// R rows x NR columns; R <= MR is a compile-time constant so the accumulators stay in registers.
// pf_begin/pf_end: a byte range of the NEXT panel to prefetch, one cache line per k step, so the
// weights stream in from memory while this panel is reused from cache by the other row tiles.
template <int R, bool BF16>
void micro(const GemmArgs& a, int cb, int r0, const char* pf_begin, const char* pf_end) {
  const LayerDesc& L = a.layer;
  const int in = L.in;
  const float* x = a.scratch + r0 * a.ld + L.in_offset;
  vf acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = vf{};

  const int64_t base = static_cast<int64_t>(cb) * in * NR;
  const float* pf = static_cast<const float*>(a.packed) + base;
  const uint16_t* ph = static_cast<const uint16_t*>(a.packed) + base;
  const char* pfp = pf_begin;
  for (int k = 0; k < in; ++k) {
    if (pfp < pf_end) {
      __builtin_prefetch(pfp, 0, 2);
      pfp += 64;
    }
    vf w[NV];
    for (int v = 0; v < NV; ++v) w[v] = BF16 ? load_h(ph + k * NR + v * VL) : load_f(pf + k * NR + v * VL);
    for (int r = 0; r < R; ++r) {
      const float xv = x[r * a.ld + k];
      for (int v = 0; v < NV; ++v) acc[r][v] += xv * w[v];
    }
  }

  const int c0 = cb * NR;
  const int nc = L.out - c0 < NR ? L.out - c0 : NR;
  for (int r = 0; r < R; ++r) {
    float tmp[NR];
    std::memcpy(tmp, &acc[r][0], sizeof(tmp));
    float* y = a.scratch + (r0 + r) * a.ld + L.out_offset + c0;
    const float* skip = L.skip_offset >= 0 ? a.scratch + (r0 + r) * a.ld + L.skip_offset + c0 : nullptr;
    const float* b = a.bias + c0;
    for (int j = 0; j < nc; ++j) y[j] = layer_epilogue(L, tmp[j], b[j], skip ? skip + j : nullptr);
  }
}

template <int R, bool BF16>
void rows_tail(const GemmArgs& a, int cb, int r, int n, const char* pb, const char* pe) {
  if constexpr (R > 0) {
    if (n == R) return micro<R, BF16>(a, cb, r, pb, pe);
    rows_tail<R - 1, BF16>(a, cb, r, n, pb, pe);
  }
}

template <bool BF16>
void tile(const GemmArgs& a, int cb, int row_begin, int row_end) {
  const int tiles = (row_end - row_begin + MR - 1) / MR;
  // With several row tiles the panel is reused from cache; spread a prefetch of the next panel
  // over them. A single row tile is a pure stream the hardware prefetcher already follows.
  const int nb = (a.layer.out + NR - 1) / NR;
  const int64_t panel_bytes = static_cast<int64_t>(a.layer.in) * NR * (BF16 ? 2 : 4);
  const char* next = static_cast<const char*>(a.packed) + (cb + 1) * panel_bytes;
  const bool pf = tiles > 1 && cb + 1 < nb;
  const int64_t share = pf ? (panel_bytes + tiles - 1) / tiles : 0;
  int r = row_begin;
  for (int t = 0; r < row_end; ++t, r += MR) {
    const char* pb = next + t * share;
    const char* pe = pf ? next + std::min<int64_t>((t + 1) * share, panel_bytes) : pb;
    if (r + MR <= row_end)
      micro<MR, BF16>(a, cb, r, pb, pe);
    else
      rows_tail<MR - 1, BF16>(a, cb, r, row_end - r, pb, pe);
  }
}

void gemm_tile(const GemmArgs& a, int cb, int row_begin, int row_end) {
  if (a.bf16)
    tile<true>(a, cb, row_begin, row_end);
  else
    tile<false>(a, cb, row_begin, row_end);
}

}  // namespace

const IsaKernels& IG3D_ENTRY() {
  static const IsaKernels k{IG3D_NAME, NR, MR, &pack, &gemm_tile};
  return k;
}

}  // namespace cpu
}  // namespace ig3d
