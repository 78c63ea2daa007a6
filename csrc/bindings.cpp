// pybind11 module ig3d._core: a thin adapter over the C++ head. Inputs are validated here (the
// error names the argument, the expected and the actual shape), outputs are allocated here, and
// the GIL is released for every compute call so camera threads keep running.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "ig3d/head.h"
#include "ig3d/warp.h"

namespace py = pybind11;
using ig3d::Head;

namespace {

using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;

std::string shape_str(const py::array& a) {
  std::ostringstream s;
  s << "[";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s << (i ? ", " : "") << a.shape(i);
  s << "]";
  return s.str();
}

// A float32 C-contiguous view of `obj` (copied only when needed). Integer, bool, complex and
// object arrays are refused rather than silently cast.
F32 as_f32(const py::handle& obj, const char* name) {
  if (F32::check_(obj)) return py::reinterpret_borrow<F32>(obj);  // float32, C-contiguous: no copy
  if (!py::isinstance<py::array>(obj))
    throw py::value_error(std::string(name) + ": expected a numpy array, got " +
                          std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
  py::array a = py::reinterpret_borrow<py::array>(obj);
  const char kind = a.dtype().kind();
  if (kind != 'f')
    throw py::value_error(std::string(name) + ": expected a floating-point array (float32), got dtype " +
                          std::string(py::str(a.dtype())));
  return F32::ensure(a);
}

F32 matrix(const py::handle& obj, const char* name, int64_t cols, int64_t rows) {
  F32 a = as_f32(obj, name);
  if (a.ndim() != 2 || a.shape(1) != cols || (rows >= 0 && a.shape(0) != rows)) {
    std::ostringstream s;
    s << name << ": expected shape [" << (rows >= 0 ? std::to_string(rows) : std::string("B")) << ", " << cols
      << "], got " << shape_str(a);
    throw py::value_error(s.str());
  }
  return a;
}

template <typename T>
std::vector<T> vec(const py::handle& obj, const char* name, int64_t n = -1) {
  py::array_t<T, py::array::c_style | py::array::forcecast> a =
      py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(obj);
  if (!a) throw py::value_error(std::string(name) + ": not convertible to an array");
  if (a.ndim() != 1 || (n >= 0 && a.shape(0) != n))
    throw py::value_error(std::string(name) + ": expected shape [" + (n >= 0 ? std::to_string(n) : "N") +
                          "], got " + shape_str(a));
  return std::vector<T>(a.data(), a.data() + a.shape(0));
}

std::unique_ptr<Head> make_head(int d_raw, const py::handle& select, const py::handle& mean,
                                const py::handle& inv_std, const py::list& weights, const py::list& biases,
                                const std::vector<int>& acts, const std::vector<float>& slopes,
                                const std::vector<int>& skips, int concat_at, bool concat_2d_first, int f2d,
                                int num_classes, int va_index, int fusion_mode, const py::handle& fusion_map,
                                const py::handle& w2d, const py::handle& w3d, bool bf16) {
  ig3d::HeadSpec s;
  s.d_raw = d_raw;
  s.select = vec<int32_t>(select, "select");
  s.mean = vec<float>(mean, "mean", static_cast<int64_t>(s.select.size()));
  s.inv_std = vec<float>(inv_std, "inv_std", static_cast<int64_t>(s.select.size()));
  const size_t L = weights.size();
  if (biases.size() != L || acts.size() != L || slopes.size() != L || skips.size() != L)
    throw py::value_error("weights, biases, activations, slopes and skips must have one entry per layer");
  for (size_t l = 0; l < L; ++l) {
    const std::string wn = "layers[" + std::to_string(l) + "].weight";
    F32 w = as_f32(weights[l], wn.c_str());
    if (w.ndim() != 2) throw py::value_error(wn + ": expected shape [out, in], got " + shape_str(w));
    ig3d::LayerSpec ls;
    ls.out = static_cast<int32_t>(w.shape(0));
    ls.in = static_cast<int32_t>(w.shape(1));
    ls.weight.assign(w.data(), w.data() + w.size());
    const std::string bn = "layers[" + std::to_string(l) + "].bias";
    ls.bias = vec<float>(biases[l], bn.c_str(), ls.out);
    ls.act = acts[l];
    ls.slope = slopes[l];
    ls.skip_from = skips[l];
    s.layers.push_back(std::move(ls));
  }
  s.concat_at = concat_at;
  s.concat_2d_first = concat_2d_first;
  s.f2d = f2d;
  s.num_classes = num_classes;
  s.va_index = va_index;
  s.fusion_mode = fusion_mode;
  s.fusion_map = vec<int32_t>(fusion_map, "fusion_map");
  s.w2d = vec<float>(w2d, "w2d", static_cast<int64_t>(s.fusion_map.size()));
  s.w3d = vec<float>(w3d, "w3d", static_cast<int64_t>(s.fusion_map.size()));
  s.bf16 = bf16;
  return std::make_unique<Head>(std::move(s));  // std::invalid_argument -> ValueError
}

py::tuple forward(const Head& h, const py::handle& params3d, const py::object& scores2d,
                  const py::object& features2d, const std::string& device, int threads) {
  const bool cuda = device == "cuda";
  if (!cuda && device != "cpu") throw py::value_error("device: expected 'cpu' or 'cuda', got '" + device + "'");
  F32 p = matrix(params3d, "params3d", h.d_raw(), -1);
  const int64_t B = p.shape(0);
  F32 s, f;
  const bool have_s = !scores2d.is_none(), have_f = h.f2d() > 0;
  if (have_s) {
    if (h.k2d() == 0)
      throw py::value_error("scores2d: this head has no late fusion (scores2d_dim=0), but scores2d was given");
    s = matrix(scores2d, "scores2d", h.k2d(), B);
  }
  if (h.f2d() > 0) {
    if (features2d.is_none())
      throw py::value_error("features2d: this head fuses a 2D feature of width " + std::to_string(h.f2d()) +
                            " (intermediate fusion); features2d is required");
    f = matrix(features2d, "features2d", h.f2d(), B);
  } else if (!features2d.is_none()) {
    throw py::value_error("features2d: this head has no intermediate fusion (features2d_dim=0), "
                          "but features2d was given");
  }
  const int64_t C = h.num_classes(), O = h.out_dim();
  py::array_t<float> probs({B, C}), logits({B, C}), out3d({B, O});
  py::object va = py::none();
  float* va_ptr = nullptr;
  if (h.has_va()) {
    py::array_t<float> v({B, int64_t{2}});
    va_ptr = v.mutable_data();
    va = v;
  }
  const float* pp = p.data();
  const float* sp = have_s ? s.data() : nullptr;
  const float* fp = have_f ? f.data() : nullptr;
  float* pr = probs.mutable_data();
  float* lo = logits.mutable_data();
  float* o3 = out3d.mutable_data();
  {
    py::gil_scoped_release nogil;
    if (cuda)
      h.forward_cuda(pp, sp, fp, B, pr, lo, va_ptr, o3);
    else
      h.forward_cpu(pp, sp, fp, B, pr, lo, va_ptr, o3, threads);
  }
  return py::make_tuple(probs, logits, va, out3d);
}

py::array_t<float> fuse_scores(const py::handle& s2d, const py::handle& s3d, int mode, float w2d, float w3d) {
  F32 a = as_f32(s2d, "s2d"), b = as_f32(s3d, "s3d");
  if (a.ndim() != b.ndim() || !std::equal(a.shape(), a.shape() + a.ndim(), b.shape()))
    throw py::value_error("s2d and s3d must have the same shape, got " + shape_str(a) + " and " + shape_str(b));
  std::vector<py::ssize_t> shape(a.shape(), a.shape() + a.ndim());
  py::array_t<float> out(shape);
  const float* ap = a.data();
  const float* bp = b.data();
  float* op = out.mutable_data();
  const int64_t n = a.size();
  {
    py::gil_scoped_release nogil;
    ig3d::fuse_scores(ap, bp, op, n, mode, w2d, w3d);
  }
  return out;
}


py::array_t<float> warp_affine(const py::handle& image_obj, const py::handle& minv_obj, int64_t out_size,
                               bool zero_border, const py::handle& lut_obj, int threads) {
  if (!py::isinstance<py::array>(image_obj))
    throw py::value_error("image: expected a numpy array, got " +
                          std::string(py::str(py::type::handle_of(image_obj).attr("__name__"))));
  py::array image = py::reinterpret_borrow<py::array>(image_obj);
  if (image.dtype().kind() != 'u' || image.itemsize() != 1 || image.ndim() != 3 || image.shape(2) != 3)
    throw py::value_error("image: expected an [H, W, 3] uint8 array, got " + std::string(py::str(image.dtype())) +
                          " " + shape_str(image));
  if (image.shape(0) < 1 || image.shape(1) < 1) throw py::value_error("image: empty, shape " + shape_str(image));
  using U8 = py::array_t<uint8_t, py::array::c_style>;
  U8 img = U8::ensure(image);  // row-contiguous copy only for non-contiguous views
  using F64 = py::array_t<double, py::array::c_style | py::array::forcecast>;
  F64 minv = F64::ensure(minv_obj);
  if (!minv || minv.ndim() != 3 || minv.shape(1) != 2 || minv.shape(2) != 3)
    throw py::value_error("minv: expected shape [N, 2, 3], got " +
                          (minv ? shape_str(minv) : std::string("a non-array")));
  const double* mp = minv.data();
  for (py::ssize_t k = 0; k < minv.size(); ++k)
    if (!std::isfinite(mp[k])) throw py::value_error("minv: must be finite");
  if (out_size < 1 || out_size > 8192)
    throw py::value_error("out_size: must be in [1, 8192], got " + std::to_string(out_size));
  F32 lut = as_f32(lut_obj, "lut");
  if (lut.ndim() != 1 || lut.shape(0) != 256) throw py::value_error("lut: expected shape [256], got " + shape_str(lut));
  const int64_t n = minv.shape(0);
  py::array_t<float> out({py::ssize_t(n), py::ssize_t(out_size), py::ssize_t(out_size), py::ssize_t(3)});
  const uint8_t* ip = img.data();
  const float* lp = lut.data();
  float* op = out.mutable_data();
  const int64_t h = img.shape(0), w = img.shape(1);
  {
    py::gil_scoped_release nogil;
    ig3d::warp_affine_u8(ip, h, w, w * 3, mp, n, out_size, zero_border, lp, op, threads);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "ig3d C++ core: the fused head (normalisation + MLP + late fusion + softmax) on CPU and CUDA";
  // pybind11 turns std::invalid_argument into ValueError and std::runtime_error into RuntimeError.
  py::class_<Head>(m, "Head")
      .def(py::init(&make_head), py::kw_only(), py::arg("d_raw"), py::arg("select"), py::arg("mean"),
           py::arg("inv_std"), py::arg("weights"), py::arg("biases"), py::arg("activations"), py::arg("slopes"),
           py::arg("skips"), py::arg("concat_at"), py::arg("concat_2d_first"), py::arg("f2d"),
           py::arg("num_classes"), py::arg("va_index"), py::arg("fusion_mode"), py::arg("fusion_map"),
           py::arg("w2d"), py::arg("w3d"), py::arg("bf16"))
      .def("forward", &forward, py::arg("params3d"), py::arg("scores2d") = py::none(),
           py::arg("features2d") = py::none(), py::arg("device") = "cpu", py::arg("threads") = 0,
           "Run the head. Returns (probs [B,C], logits [B,C], va [B,2] or None, out3d [B,O]).")
      .def_property_readonly("d_raw", &Head::d_raw)
      .def_property_readonly("k2d", &Head::k2d)
      .def_property_readonly("f2d", &Head::f2d)
      .def_property_readonly("out_dim", &Head::out_dim)
      .def_property_readonly("num_classes", &Head::num_classes)
      .def_property_readonly("isa", &Head::isa)
      .def_property_readonly("macs_per_row", &Head::macs_per_row);

  m.def("fuse_scores", &fuse_scores, py::arg("s2d"), py::arg("s3d"), py::arg("mode"), py::arg("w2d"),
        py::arg("w3d"));
  m.def("warp_affine", &warp_affine, py::arg("image"), py::arg("minv"), py::arg("out_size"),
        py::arg("zero_border"), py::arg("lut"), py::arg("threads") = 0,
        "Affine crops [N, S, S, 3] float32 (OpenCV INTER_LINEAR fixed point, then lut[uint8]) of an "
        "[H, W, 3] uint8 image; minv [N, 2, 3] maps crop pixels to image pixels.");
  m.def("cpu_isa", &ig3d::cpu_isa);
  m.def("supported_cpu_isas", &ig3d::supported_cpu_isas);
  m.def("force_cpu_isa", &ig3d::force_cpu_isa, py::arg("name"));
  m.def("cuda_compiled", &ig3d::cuda_compiled);
  m.def("cuda_device_count", [] {
    std::string why;
    const int n = ig3d::cuda_device_count(&why);
    return py::make_tuple(n, why);
  });
  m.def("get_num_threads", &ig3d::default_threads);
  m.def("set_num_threads", &ig3d::set_default_threads, py::arg("n"));
}
