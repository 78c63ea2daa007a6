// Affine image crops with OpenCV's INTER_LINEAR fixed-point arithmetic (what MediaPipe's CPU
// ImageToTensor computes): the landmark model's rotated face crops, the detectors' letterboxes
// and the expression model's face crops, for many faces of one image in one call.
#pragma once

#include <cstdint>

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

}  // namespace ig3d
