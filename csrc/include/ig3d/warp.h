// Affine image crops with OpenCV's INTER_LINEAR fixed-point arithmetic (what MediaPipe's CPU
// ImageToTensor computes): the landmark model's rotated face crops, the detectors' letterboxes
// and the expression model's face crops, for many faces of one image in one call.
//
// The per-pixel arithmetic lives here, written once for host and device: the CPU kernel
// (csrc/cpu/warp.cpp, compiled with -ffp-contract=off) and the CUDA kernel (csrc/cuda/warp_cuda.cu,
// compiled with -fmad=false) call the same functions, so both give the same bytes. Under nvcc the
// functions are __host__ __device__.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define IG3D_WARP_HD __host__ __device__ __forceinline__
#else
#define IG3D_WARP_HD inline
#endif

namespace ig3d {

// Writes `n` crops of `out_size` x `out_size` RGB pixels from the uint8 `image` [h, w, 3]
// (row stride `row_stride` bytes, pixel stride 3) to `out` [n, S, S, 3] float32.
//
// minv [n, 2, 3] (float64, row-major) maps crop pixel (j, i, 1) to image pixel coordinates
// (pixel centres at integers). Each output pixel is OpenCV's bilinear sample: coordinates
// rounded to 1/32 pixel, integer weights, result rounded to uint8, then mapped through `lut`
// (256 floats, e.g. v / 255). Taps outside the image repeat the edge (zero_border = false) or
// read 0 (zero_border = true). Maps without rotation or shear take a separable path, as the
// numpy reference in ig3d.faces.landmarks does, so both give identical bytes. Crops inside the
// image run 8 pixels at a time on CPUs with AVX2 (same integer arithmetic, chosen at run time).
void warp_affine_u8(const uint8_t* image, int64_t h, int64_t w, int64_t row_stride, const double* minv,
                    int64_t n, int64_t out_size, bool zero_border, const float* lut, float* out, int threads);

namespace warp {

constexpr int kFracBits = 5;                      // OpenCV INTER_BITS
constexpr int64_t kFrac = 1 << kFracBits;         // 32 steps per pixel
constexpr int kSubBits = 16;                      // guard bits below 1/32 pixel
constexpr double kFixedScale = double(int64_t(1) << (kFracBits + kSubBits));
constexpr int64_t kHalf = int64_t(1) << (kSubBits - 1);
constexpr uint32_t kRound = 1u << (2 * kFracBits - 1);

// A float64 image coordinate in fixed point (1/32 pixel plus kSubBits guard bits), rounded to
// nearest even as numpy's np.rint does.
IG3D_WARP_HD int64_t fixed(double v) { return static_cast<int64_t>(rint(v * kFixedScale)); }

// One crop's sampling region. General maps sample relative to (x_lo, y_lo), the corner of the
// hull of the crop's footprint (widened by the bilinear taps, clamped to the image plus a
// 2-pixel ring); `clip` says that region leaves the image, and then taps are clamped to it.
struct Map {
  bool separable;  // no rotation or shear: x depends on the column only, y on the row only
  bool clip;
  int64_t x_lo, y_lo, max_rx, max_ry;
  int64_t ox, oy;  // separable: fixed-point translation
};

IG3D_WARP_HD Map make_map(const double* m, int64_t s, int64_t h, int64_t w) {
  Map p{};
  if (m[1] == 0.0 && m[3] == 0.0) {
    p.separable = true;
    p.ox = fixed(m[2]);
    p.oy = fixed(m[5]);
    return p;
  }
  const double last = double(s - 1);
  double min_x = INFINITY, min_y = INFINITY, max_x = -INFINITY, max_y = -INFINITY;
  for (int c = 0; c < 4; ++c) {
    const double qx = (c & 1) ? last : 0.0, qy = (c & 2) ? last : 0.0;
    const double px = qx * m[0] + qy * m[1] + m[2];
    const double py = qx * m[3] + qy * m[4] + m[5];
    min_x = px < min_x ? px : min_x;
    max_x = px > max_x ? px : max_x;
    min_y = py < min_y ? py : min_y;
    max_y = py > max_y ? py : max_y;
  }
  int64_t x_lo = int64_t(floor(min_x)) - 1, y_lo = int64_t(floor(min_y)) - 1;
  x_lo = x_lo > -2 ? x_lo : -2;
  y_lo = y_lo > -2 ? y_lo : -2;
  int64_t x_hi = int64_t(floor(max_x)) + 2, y_hi = int64_t(floor(max_y)) + 2;
  x_hi = x_hi < w + 1 ? x_hi : w + 1;
  y_hi = y_hi < h + 1 ? y_hi : h + 1;
  x_lo = x_lo < x_hi - 1 ? x_lo : x_hi - 1;  // region entirely off the image
  y_lo = y_lo < y_hi - 1 ? y_lo : y_hi - 1;
  p.x_lo = x_lo;
  p.y_lo = y_lo;
  p.clip = !(x_lo >= 0 && y_lo >= 0 && x_hi < w && y_hi < h);
  p.max_rx = x_hi - x_lo - 1;  // taps rx and rx + 1 stay inside the region
  p.max_ry = y_hi - y_lo - 1;
  return p;
}

// Fixed-point coordinate terms: x = row_x(i) + col_x(j), y = row_y(i) + col_y(j) (before the
// >> kSubBits). Separable maps have row_x = 0 and col_y = 0.
IG3D_WARP_HD int64_t col_x(const double* m, const Map& p, int64_t j) {
  return p.separable ? fixed(m[0] * double(j)) + p.ox + kHalf : fixed(m[0] * double(j)) + kHalf;
}
IG3D_WARP_HD int64_t col_y(const double* m, const Map& p, int64_t j) {
  return p.separable ? 0 : fixed(m[3] * double(j)) + kHalf;
}
IG3D_WARP_HD int64_t row_x(const double* m, const Map& p, int64_t i) {
  return p.separable ? 0 : fixed(m[1] * double(i) + (m[2] - double(p.x_lo)));
}
IG3D_WARP_HD int64_t row_y(const double* m, const Map& p, int64_t i) {
  return p.separable ? fixed(m[4] * double(i)) + p.oy + kHalf : fixed(m[4] * double(i) + (m[5] - double(p.y_lo)));
}

// Pixel (x, y) in image coordinates; outside the image: the edge pixel or `black`.
IG3D_WARP_HD const uint8_t* tap(const uint8_t* image, int64_t h, int64_t w, int64_t stride, bool zero_border,
                                int64_t x, int64_t y, const uint8_t* black) {
  if (x < 0 || y < 0 || x >= w || y >= h) {
    if (zero_border) return black;
    x = x < 0 ? 0 : (x > w - 1 ? w - 1 : x);
    y = y < 0 ? 0 : (y > h - 1 ? h - 1 : y);
  }
  return image + y * stride + 3 * x;
}

// OpenCV's integer bilinear blend of four taps with 1/32-pixel weights ax, ay, then the LUT.
IG3D_WARP_HD void blend(const uint8_t* p00, const uint8_t* p01, const uint8_t* p10, const uint8_t* p11, uint32_t ax,
                        uint32_t ay, const float* lut, float* o) {
  const uint32_t bx = uint32_t(kFrac) - ax, by = uint32_t(kFrac) - ay;
  for (int ch = 0; ch < 3; ++ch) {
    const uint32_t top = p00[ch] * bx + p01[ch] * ax;
    const uint32_t bot = p10[ch] * bx + p11[ch] * ax;
    o[ch] = lut[(top * by + bot * ay + kRound) >> (2 * kFracBits)];
  }
}

// One output pixel from its fixed-point coordinates (x, y before the >> kSubBits), with every
// bounds rule: the reference that the CPU's faster loops and the CUDA kernel must equal.
IG3D_WARP_HD void sample(const uint8_t* image, int64_t h, int64_t w, int64_t stride, bool zero_border,
                         const Map& p, int64_t fx, int64_t fy, const float* lut, float* o) {
  const uint8_t black[3] = {0, 0, 0};
  const int64_t qx = fx >> kSubBits, qy = fy >> kSubBits;
  const uint32_t ax = uint32_t(qx & (kFrac - 1)), ay = uint32_t(qy & (kFrac - 1));
  int64_t rx = qx >> kFracBits, ry = qy >> kFracBits;
  if (!p.separable && p.clip) {
    rx = rx < 0 ? 0 : (rx > p.max_rx ? p.max_rx : rx);
    ry = ry < 0 ? 0 : (ry > p.max_ry ? p.max_ry : ry);
  }
  const int64_t x = rx + (p.separable ? 0 : p.x_lo), y = ry + (p.separable ? 0 : p.y_lo);
  blend(tap(image, h, w, stride, zero_border, x, y, black), tap(image, h, w, stride, zero_border, x + 1, y, black),
        tap(image, h, w, stride, zero_border, x, y + 1, black),
        tap(image, h, w, stride, zero_border, x + 1, y + 1, black), ax, ay, lut, o);
}

}  // namespace warp
}  // namespace ig3d
