// pybind11 module ig3d._core: a thin adapter over the C++ head. Inputs are validated here (the
// error names the argument, the expected and the actual shape), outputs are allocated here, and
// the GIL is released for every compute call so camera threads keep running.
//
// Device arrays come in as raw pointers that ig3d.device has already checked (shape, dtype,
// device, contiguity); their outputs go out as DeviceBuffer objects (stream-ordered device
// memory, freed when the last Python reference goes). DLPack capsules are read and made here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "ig3d/cuda_api.h"
#include "ig3d/dlpack_abi.h"
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


// ---------------------------------------------------------------------------------------------
// Device memory and device arrays

// Device memory from the stream-ordered pool of `device`, released on `stream` with the object.
struct DeviceBuffer {
  uintptr_t ptr = 0;
  size_t nbytes = 0;
  int device = 0;
  uintptr_t stream = 0;
  DeviceBuffer(size_t n, int dev, uintptr_t s) : nbytes(n), device(dev), stream(s) {
    ptr = reinterpret_cast<uintptr_t>(ig3d::gpu::alloc(n, dev, s));
  }
  ~DeviceBuffer() { ig3d::gpu::release(reinterpret_cast<void*>(ptr), device, stream); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

int64_t aligned(int64_t bytes) { return (bytes + 255) / 256 * 256; }

const float* fptr(uintptr_t p) { return reinterpret_cast<const float*>(p); }

py::tuple forward_device(const Head& h, uintptr_t params3d, uintptr_t scores2d, uintptr_t features2d, int64_t batch,
                         int device, uintptr_t stream) {
  if (batch < 0) throw py::value_error("batch: must be >= 0, got " + std::to_string(batch));
  if (!params3d && batch > 0) throw py::value_error("params3d: null device pointer");
  if (scores2d && h.k2d() == 0)
    throw py::value_error("scores2d: this head has no late fusion (scores2d_dim=0), but scores2d was given");
  if (h.f2d() > 0 && !features2d && batch > 0)
    throw py::value_error("features2d: this head fuses a 2D feature of width " + std::to_string(h.f2d()) +
                          " (intermediate fusion); features2d is required");
  if (h.f2d() == 0 && features2d)
    throw py::value_error("features2d: this head has no intermediate fusion (features2d_dim=0), "
                          "but features2d was given");
  const int64_t C = h.num_classes(), O = h.out_dim(), fl = int64_t(sizeof(float));
  const int64_t o_probs = 0, o_logits = aligned(batch * C * fl), o_va = o_logits + aligned(batch * C * fl);
  const int64_t o_out3d = o_va + (h.has_va() ? aligned(batch * 2 * fl) : 0);
  const int64_t total = o_out3d + aligned(batch * O * fl);
  std::unique_ptr<DeviceBuffer> buf;
  {
    py::gil_scoped_release nogil;
    buf.reset(new DeviceBuffer(static_cast<size_t>(total), device, stream));
    float* base = reinterpret_cast<float*>(buf->ptr);
    auto at = [&](int64_t off) { return reinterpret_cast<float*>(reinterpret_cast<char*>(base) + off); };
    h.forward_device(fptr(params3d), fptr(scores2d), fptr(features2d), batch, at(o_probs), at(o_logits),
                     h.has_va() ? at(o_va) : nullptr, at(o_out3d), device, stream);
  }
  return py::make_tuple(py::cast(std::move(buf)), py::make_tuple(o_probs, o_logits, h.has_va() ? o_va : -1, o_out3d));
}

std::unique_ptr<DeviceBuffer> warp_affine_device(uintptr_t image, int64_t h, int64_t w, int64_t row_stride,
                                                 const py::handle& minv_obj, int64_t out_size, bool zero_border,
                                                 const py::handle& lut_obj, int device, uintptr_t stream) {
  if (!image) throw py::value_error("image: null device pointer");
  if (h < 1 || w < 1)
    throw py::value_error("image: empty, shape [" + std::to_string(h) + ", " + std::to_string(w) + ", 3]");
  if (row_stride < 3 * w) throw py::value_error("image: row stride " + std::to_string(row_stride) +
                                                " bytes is less than 3 * width (" + std::to_string(3 * w) + ")");
  using F64 = py::array_t<double, py::array::c_style | py::array::forcecast>;
  F64 minv = F64::ensure(minv_obj);
  if (!minv || minv.ndim() != 3 || minv.shape(1) != 2 || minv.shape(2) != 3)
    throw py::value_error("minv: expected shape [N, 2, 3], got " +
                          (minv ? shape_str(minv) : std::string("a non-array")));
  for (py::ssize_t k = 0; k < minv.size(); ++k)
    if (!std::isfinite(minv.data()[k])) throw py::value_error("minv: must be finite");
  if (out_size < 1 || out_size > 8192)
    throw py::value_error("out_size: must be in [1, 8192], got " + std::to_string(out_size));
  F32 lut = as_f32(lut_obj, "lut");
  if (lut.ndim() != 1 || lut.shape(0) != 256) throw py::value_error("lut: expected shape [256], got " + shape_str(lut));
  const int64_t n = minv.shape(0);
  const double* mp = minv.data();
  const float* lp = lut.data();
  std::unique_ptr<DeviceBuffer> out;
  {
    py::gil_scoped_release nogil;
    out.reset(new DeviceBuffer(static_cast<size_t>(n * out_size * out_size * 3) * sizeof(float), device, stream));
    if (n > 0) {
      // the maps and the LUT travel with the launch, in a block freed in stream order after it
      const int64_t lut_off = aligned(n * 6 * int64_t(sizeof(double)));
      DeviceBuffer aux(static_cast<size_t>(lut_off + 256 * sizeof(float)), device, stream);
      char* a = reinterpret_cast<char*>(aux.ptr);
      ig3d::gpu::copy_to_device(a, mp, n * 6 * sizeof(double), device, stream);
      ig3d::gpu::copy_to_device(a + lut_off, lp, 256 * sizeof(float), device, stream);
      ig3d::gpu::warp_affine_u8_cuda(reinterpret_cast<const uint8_t*>(image), h, w, row_stride,
                                     reinterpret_cast<const double*>(a), n, out_size, zero_border,
                                     reinterpret_cast<const float*>(a + lut_off), reinterpret_cast<float*>(out->ptr),
                                     device, stream);
    }
  }
  return out;
}

py::array writable_contiguous(const py::handle& obj, const char* name) {
  if (!py::isinstance<py::array>(obj)) throw py::value_error(std::string(name) + ": expected a numpy array");
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(name) + ": must be C-contiguous");
  return a;
}

void copy_to_host(uintptr_t src, const py::handle& out_obj, int device, uintptr_t stream) {
  py::array out = writable_contiguous(out_obj, "out");
  if (!out.writeable()) throw py::value_error("out: must be writable");
  void* dst = out.mutable_data();
  const size_t n = static_cast<size_t>(out.nbytes());
  if (n && !src) throw py::value_error("src: null device pointer");
  py::gil_scoped_release nogil;
  ig3d::gpu::copy_to_host(dst, reinterpret_cast<const void*>(src), n, device, stream);
}

void copy_to_device(uintptr_t dst, const py::handle& src_obj, int device, uintptr_t stream) {
  py::array src = writable_contiguous(src_obj, "src");
  const void* sp = src.data();
  const size_t n = static_cast<size_t>(src.nbytes());
  if (n && !dst) throw py::value_error("dst: null device pointer");
  py::gil_scoped_release nogil;
  ig3d::gpu::copy_to_device(reinterpret_cast<void*>(dst), sp, n, device, stream);
}

// ---------------------------------------------------------------------------------------------
// DLPack

namespace dl = ig3d::dlpack;

// Consumes a "dltensor" capsule: renames it "used_dltensor" and returns (data pointer with the
// byte offset applied, shape, strides in elements or None, (code, bits, lanes), device type,
// device id, owner). The owner calls the producer's deleter when it is collected.
py::tuple dlpack_parse(const py::handle& obj) {
  PyObject* o = obj.ptr();
  if (!PyCapsule_CheckExact(o))
    throw py::value_error("expected a DLPack capsule, got " +
                          std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
  if (!PyCapsule_IsValid(o, "dltensor")) {
    if (PyCapsule_IsValid(o, "used_dltensor"))
      throw py::value_error("this DLPack capsule was already consumed (a capsule can be used once)");
    throw py::value_error("expected a DLPack capsule named 'dltensor' (versioned DLPack 1.x capsules are not read)");
  }
  auto* mt = static_cast<dl::ManagedTensor*>(PyCapsule_GetPointer(o, "dltensor"));
  if (!mt) throw py::error_already_set();
  if (PyCapsule_SetName(o, "used_dltensor") != 0) throw py::error_already_set();
  py::capsule owner(static_cast<void*>(mt), [](void* p) {
    auto* m = static_cast<dl::ManagedTensor*>(p);
    if (m->deleter) m->deleter(m);
  });
  const dl::Tensor& t = mt->dl_tensor;
  if (t.ndim < 0 || t.ndim > 32) throw py::value_error("DLPack tensor: ndim " + std::to_string(t.ndim) + " is invalid");
  py::tuple shape(t.ndim);
  for (int32_t k = 0; k < t.ndim; ++k) shape[k] = py::int_(t.shape[k]);
  py::object strides = py::none();
  if (t.strides) {
    py::tuple st(t.ndim);
    for (int32_t k = 0; k < t.ndim; ++k) st[k] = py::int_(t.strides[k]);
    strides = st;
  }
  const uintptr_t data = reinterpret_cast<uintptr_t>(t.data) + static_cast<uintptr_t>(t.byte_offset);
  return py::make_tuple(data, shape, strides, py::make_tuple(int(t.dtype.code), int(t.dtype.bits), int(t.dtype.lanes)),
                        t.device.device_type, t.device.device_id, owner);
}

struct ExportCtx {
  dl::ManagedTensor mt{};
  std::vector<int64_t> shape;
  PyObject* owner = nullptr;
};

void export_deleter(dl::ManagedTensor* self) {
  auto* ctx = static_cast<ExportCtx*>(self->manager_ctx);
  {
    py::gil_scoped_acquire gil;
    Py_XDECREF(ctx->owner);
  }
  delete ctx;
}

void export_capsule_destructor(PyObject* cap) {
  if (!PyCapsule_IsValid(cap, "dltensor")) return;  // consumed: the consumer calls the deleter
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  auto* mt = static_cast<dl::ManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
  if (mt && mt->deleter) mt->deleter(mt);
  PyErr_Restore(type, value, tb);
}

// A "dltensor" capsule over C-contiguous memory at `data`; it keeps `owner` alive until the
// consumer is done with it.
py::object dlpack_capsule(uintptr_t data, const std::vector<int64_t>& shape, int code, int bits, int device_type,
                          int device_id, const py::object& owner) {
  auto* ctx = new ExportCtx();
  ctx->shape = shape;
  ctx->owner = owner.ptr();
  Py_XINCREF(ctx->owner);
  dl::Tensor& t = ctx->mt.dl_tensor;
  t.data = reinterpret_cast<void*>(data);
  t.device = dl::Device{device_type, device_id};
  t.ndim = static_cast<int32_t>(shape.size());
  t.dtype = dl::DataType{static_cast<uint8_t>(code), static_cast<uint8_t>(bits), 1};
  t.shape = ctx->shape.data();
  t.strides = nullptr;
  t.byte_offset = 0;
  ctx->mt.manager_ctx = ctx;
  ctx->mt.deleter = &export_deleter;
  PyObject* cap = PyCapsule_New(&ctx->mt, "dltensor", &export_capsule_destructor);
  if (!cap) {
    Py_XDECREF(ctx->owner);
    delete ctx;
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::object>(cap);
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
      .def("forward_device", &forward_device, py::arg("params3d"), py::arg("scores2d"), py::arg("features2d"),
           py::arg("batch"), py::arg("device"), py::arg("stream"),
           "Run the head on device pointers (checked by the caller). Returns (DeviceBuffer, byte offsets of "
           "probs, logits, va (-1: none), out3d).")
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
  py::class_<DeviceBuffer, std::unique_ptr<DeviceBuffer>>(m, "DeviceBuffer")
      .def(py::init([](size_t nbytes, int device, uintptr_t stream) {
             py::gil_scoped_release nogil;
             return std::make_unique<DeviceBuffer>(nbytes, device, stream);
           }),
           py::arg("nbytes"), py::arg("device"), py::arg("stream"))
      .def_readonly("ptr", &DeviceBuffer::ptr)
      .def_readonly("nbytes", &DeviceBuffer::nbytes)
      .def_readonly("device", &DeviceBuffer::device)
      .def_readonly("stream", &DeviceBuffer::stream);
  m.def("warp_affine_device", &warp_affine_device, py::arg("image"), py::arg("h"), py::arg("w"), py::arg("row_stride"),
        py::arg("minv"), py::arg("out_size"), py::arg("zero_border"), py::arg("lut"), py::arg("device"),
        py::arg("stream"),
        "warp_affine on a device image (pointer, [h, w, 3] uint8 with row_stride bytes per row); returns a "
        "DeviceBuffer of [N, S, S, 3] float32 crops.");
  m.def("copy_to_host", &copy_to_host, py::arg("src"), py::arg("out"), py::arg("device"), py::arg("stream"));
  m.def("copy_to_device", &copy_to_device, py::arg("dst"), py::arg("src"), py::arg("device"), py::arg("stream"));
  m.def("cuda_pointer_device", [](uintptr_t p) { return ig3d::gpu::pointer_device(reinterpret_cast<const void*>(p)); },
        py::arg("ptr"));
  m.def("cuda_require_device", &ig3d::gpu::require_device, py::arg("device"));
  m.def("cuda_stream_wait", &ig3d::gpu::stream_wait, py::arg("device"), py::arg("waiter"), py::arg("waitee"));
  m.def("dlpack_parse", &dlpack_parse, py::arg("capsule"));
  m.def("dlpack_capsule", &dlpack_capsule, py::arg("data"), py::arg("shape"), py::arg("code"), py::arg("bits"),
        py::arg("device_type"), py::arg("device_id"), py::arg("owner"));
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
