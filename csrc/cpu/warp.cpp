// Affine crops with OpenCV INTER_LINEAR fixed-point arithmetic; see ig3d/warp.h.
//
// This is the C++ form of the numpy reference ig3d.faces.landmarks._warp_crops_numpy and must
// stay byte-identical to it (python_tests/test_landmarks.py compares them): the same fixed-point
// coordinates (1/32 pixel plus 16 guard bits, formed from the same float64 expressions), the
// same source region and clamping, the same integer blend. That arithmetic is in ig3d/warp.h,
// shared with the CUDA kernel; this file adds the per-crop precomputation, threads and the AVX2
// loop. It is compiled with -ffp-contract=off so that no multiply-add is fused differently from numpy.
#include "ig3d/warp.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define IG3D_WARP_AVX2 1
#include <immintrin.h>
#endif

namespace ig3d {

int default_threads();
int team_threads(int requested);  // ig3d/head.h

namespace {

using warp::kFrac;
using warp::kFracBits;
using warp::kRound;
using warp::kSubBits;

// One crop's sampling plan: the shared warp::Map plus its fixed-point coordinate terms per output
// row and column (precomputed once per crop), and what the fast loops may assume.
struct Plan {
  warp::Map map{};
  bool separable = false;
  // general: coordinate = off[i] + col[j]; separable: x from col_x[j], y from off_y[i]
  std::vector<int64_t> off_x, off_y, col_x, col_y;
  int64_t x_lo = 0, y_lo = 0;  // region origin (general maps)
  bool all_inside = false;  // every tap of every output pixel is an image pixel
  // all_inside, and no tap is the image's last pixel: 4-byte loads at any tap stay in the buffer
  bool wide_loads = false;
};

Plan make_plan(const double* m, int64_t s, int64_t h, int64_t w) {
  Plan p;
  p.map = warp::make_map(m, s, h, w);
  p.separable = p.map.separable;
  p.off_x.resize(s);
  p.off_y.resize(s);
  p.col_x.resize(s);
  p.col_y.resize(s);
  for (int64_t k = 0; k < s; ++k) {
    p.off_x[k] = warp::row_x(m, p.map, k);
    p.off_y[k] = warp::row_y(m, p.map, k);
    p.col_x[k] = warp::col_x(m, p.map, k);
    p.col_y[k] = warp::col_y(m, p.map, k);
  }
  if (p.separable) {
    const auto [xmin, xmax] = std::minmax_element(p.col_x.begin(), p.col_x.end());
    const auto [ymin, ymax] = std::minmax_element(p.off_y.begin(), p.off_y.end());
    const int64_t shift = kSubBits + kFracBits;
    p.all_inside = (*xmin >> shift) >= 0 && (*xmax >> shift) + 1 < w && (*ymin >> shift) >= 0 &&
                   (*ymax >> shift) + 1 < h;
    p.wide_loads = p.all_inside && ((*xmax >> shift) + 1 < w - 1 || (*ymax >> shift) + 1 < h - 1);
    return p;
  }
  p.x_lo = p.map.x_lo;
  p.y_lo = p.map.y_lo;
  const int64_t x_hi = p.map.x_lo + p.map.max_rx + 1, y_hi = p.map.y_lo + p.map.max_ry + 1;
  p.all_inside = !p.map.clip;  // the region, which holds every tap, lies in the image
  p.wide_loads = p.all_inside && (x_hi < w - 1 || y_hi < h - 1);
  return p;
}

struct Image {
  const uint8_t* data;
  int64_t h, w, stride;
  bool zero_border;
};

inline void blend(const uint8_t* p00, const uint8_t* p01, const uint8_t* p10, const uint8_t* p11, uint32_t ax,
                  uint32_t ay, const float* lut, float* o) {
  warp::blend(p00, p01, p10, p11, ax, ay, lut, o);
}

#ifdef IG3D_WARP_AVX2
// The all-inside row, 8 output pixels at a time: the same integer arithmetic as the scalar loop
// (fixed-point coordinates, integer weights, rounding shift, LUT), so the same bytes. Each tap is
// one 4-byte gather (R, G, B and one byte of the next pixel, which is ignored); Plan::wide_loads
// says such loads stay inside the image. Returns how many pixels it wrote (a multiple of 8).
//
// coords8: fixed-point coordinates (>= 0 on this path) >> kSubBits for 8 pixels, as int32.
__attribute__((target("avx2"))) inline __m256i coords8(const __m256i off, const int64_t* col,
                                                        const __m256i low_halves) {
  const __m256i a = _mm256_srli_epi64(
      _mm256_add_epi64(off, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(col))), kSubBits);
  const __m256i b = _mm256_srli_epi64(
      _mm256_add_epi64(off, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(col + 4))), kSubBits);
  return _mm256_set_m128i(_mm256_castsi256_si128(_mm256_permutevar8x32_epi32(b, low_halves)),
                          _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(a, low_halves)));
}

__attribute__((target("avx2"))) int64_t warp_row_avx2(const Image& im, const Plan& p, int64_t i, int64_t s,
                                                       const float* lut, float* o) {
  const int64_t n8 = s & ~int64_t(7);
  const __m256i off_x = _mm256_set1_epi64x(p.separable ? 0 : p.off_x[i]);
  const __m256i off_y = _mm256_set1_epi64x(p.off_y[i]);
  const __m256i x_lo = _mm256_set1_epi32(int32_t(p.x_lo)), y_lo = _mm256_set1_epi32(int32_t(p.y_lo));
  const __m256i stride = _mm256_set1_epi32(int32_t(im.stride)), three = _mm256_set1_epi32(3);
  const __m256i frac_mask = _mm256_set1_epi32(int32_t(kFrac - 1)), full = _mm256_set1_epi32(int32_t(kFrac));
  const __m256i byte = _mm256_set1_epi32(0xFF), round = _mm256_set1_epi32(int32_t(kRound));
  const __m256i low_halves = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  const int* base = reinterpret_cast<const int*>(im.data);
  alignas(32) float ch[3][8];
  for (int64_t j = 0; j < n8; j += 8) {
    const __m256i qx = coords8(off_x, p.col_x.data() + j, low_halves);
    const __m256i qy = p.separable ? _mm256_set1_epi32(int32_t(p.off_y[i] >> kSubBits))
                                   : coords8(off_y, p.col_y.data() + j, low_halves);
    const __m256i x = _mm256_add_epi32(_mm256_srli_epi32(qx, kFracBits), x_lo);
    const __m256i y = _mm256_add_epi32(_mm256_srli_epi32(qy, kFracBits), y_lo);
    const __m256i ax = _mm256_and_si256(qx, frac_mask), ay = _mm256_and_si256(qy, frac_mask);
    const __m256i bx = _mm256_sub_epi32(full, ax), by = _mm256_sub_epi32(full, ay);
    const __m256i at = _mm256_add_epi32(_mm256_mullo_epi32(y, stride), _mm256_mullo_epi32(x, three));
    const __m256i g00 = _mm256_i32gather_epi32(base, at, 1);
    const __m256i g01 = _mm256_i32gather_epi32(base, _mm256_add_epi32(at, three), 1);
    const __m256i below = _mm256_add_epi32(at, stride);
    const __m256i g10 = _mm256_i32gather_epi32(base, below, 1);
    const __m256i g11 = _mm256_i32gather_epi32(base, _mm256_add_epi32(below, three), 1);
    for (int c = 0; c < 3; ++c) {
      const __m128i sh = _mm_cvtsi32_si128(8 * c);
      const __m256i top = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_and_si256(_mm256_srl_epi32(g00, sh), byte), bx),
                                           _mm256_mullo_epi32(_mm256_and_si256(_mm256_srl_epi32(g01, sh), byte), ax));
      const __m256i bot = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_and_si256(_mm256_srl_epi32(g10, sh), byte), bx),
                                           _mm256_mullo_epi32(_mm256_and_si256(_mm256_srl_epi32(g11, sh), byte), ax));
      const __m256i v = _mm256_srli_epi32(
          _mm256_add_epi32(_mm256_add_epi32(_mm256_mullo_epi32(top, by), _mm256_mullo_epi32(bot, ay)), round),
          2 * kFracBits);
      _mm256_store_ps(ch[c], _mm256_i32gather_ps(lut, v, 4));
    }
    for (int k = 0; k < 8; ++k, o += 3) {
      o[0] = ch[0][k];
      o[1] = ch[1][k];
      o[2] = ch[2][k];
    }
  }
  return n8;
}

bool have_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
}
#endif

void warp_row(const Image& im, const Plan& p, int64_t i, int64_t s, const float* lut, float* o) {
  if (p.all_inside) {  // no bounds checks
    const int64_t st = im.stride;
    int64_t j = 0;
#ifdef IG3D_WARP_AVX2
    // int32 byte offsets: the image must be under 2 GiB
    if (p.wide_loads && im.h * st < (int64_t(1) << 31) && have_avx2()) {
      j = warp_row_avx2(im, p, i, s, lut, o);
      o += 3 * j;
    }
#endif
    for (; j < s; ++j, o += 3) {
      int64_t qx, qy;
      if (p.separable) {
        qx = p.col_x[j] >> kSubBits;
        qy = p.off_y[i] >> kSubBits;
      } else {
        qx = (p.off_x[i] + p.col_x[j]) >> kSubBits;
        qy = (p.off_y[i] + p.col_y[j]) >> kSubBits;
      }
      const int64_t x = (qx >> kFracBits) + (p.separable ? 0 : p.x_lo);
      const int64_t y = (qy >> kFracBits) + (p.separable ? 0 : p.y_lo);
      const uint8_t* q = im.data + y * st + 3 * x;
      blend(q, q + 3, q + st, q + st + 3, uint32_t(qx & (kFrac - 1)), uint32_t(qy & (kFrac - 1)), lut, o);
    }
    return;
  }
  // Near or across the border: the shared per-pixel rule with every bounds check.
  for (int64_t j = 0; j < s; ++j, o += 3)
    warp::sample(im.data, im.h, im.w, im.stride, im.zero_border, p.map, p.off_x[i] + p.col_x[j],
                 p.off_y[i] + p.col_y[j], lut, o);
}

}  // namespace

void warp_affine_u8(const uint8_t* image, int64_t h, int64_t w, int64_t row_stride, const double* minv,
                    int64_t n, int64_t out_size, bool zero_border, const float* lut, float* out, int threads) {
  const int64_t s = out_size;
  if (n <= 0 || s <= 0) return;
  std::vector<Plan> plans;
  plans.reserve(n);
  for (int64_t f = 0; f < n; ++f) plans.push_back(make_plan(minv + 6 * f, s, h, w));
  const Image im{image, h, w, row_stride, zero_border};
  const int64_t rows = n * s;
#ifdef _OPENMP
  const int nt = team_threads(
      int(std::min<int64_t>(threads > 0 ? threads : default_threads(), std::max<int64_t>(1, rows / 16))));
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
#endif
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t f = r / s, i = r % s;
    warp_row(im, plans[f], i, s, lut, out + (f * s + i) * s * 3);
  }
}

}  // namespace ig3d
