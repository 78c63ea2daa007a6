// Host side of the fused head: builds the HeadDesc from a spec, packs the weights for the chosen
// instruction set, and runs normalisation -> MLP -> late fusion -> softmax in one parallel region.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>

#include "ig3d/cpu_kernels.h"
#include "ig3d/head.h"

#ifdef _WIN32
#include <process.h>
#else
#include <unistd.h>
#endif

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace ig3d {
namespace cpu {

namespace {
std::atomic<const IsaKernels*> g_forced{nullptr};

bool cpu_has(const char* what) {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  if (std::strcmp(what, "avx512") == 0)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
  if (std::strcmp(what, "avx2") == 0)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  (void)what;
  return false;
}
}  // namespace

const IsaKernels& detected_kernels() {
  static const IsaKernels* best = [] {
#if defined(IG3D_HAVE_X86_ISAS)
    if (cpu_has("avx512")) return &kernels_avx512();
    if (cpu_has("avx2")) return &kernels_avx2();
#endif
    return &kernels_generic();
  }();
  return *best;
}

const IsaKernels& best_kernels() {
  const IsaKernels* f = g_forced.load();
  return f ? *f : detected_kernels();
}

}  // namespace cpu

// ---------------------------------------------------------------------------------------------
// Run-time facts

const char* cpu_isa() { return cpu::best_kernels().name; }

std::vector<std::string> supported_cpu_isas() {
  std::vector<std::string> out;
#if defined(IG3D_HAVE_X86_ISAS)
  if (cpu::cpu_has("avx512")) out.push_back(cpu::kernels_avx512().name);
  if (cpu::cpu_has("avx2")) out.push_back(cpu::kernels_avx2().name);
#endif
  out.push_back(cpu::kernels_generic().name);
  return out;
}

void force_cpu_isa(const std::string& name) {
  if (name.empty() || name == "auto") {
    cpu::g_forced.store(nullptr);
    return;
  }
#if defined(IG3D_HAVE_X86_ISAS)
  if (name == "avx512" && cpu::cpu_has("avx512")) return cpu::g_forced.store(&cpu::kernels_avx512());
  if (name == "avx2" && cpu::cpu_has("avx2")) return cpu::g_forced.store(&cpu::kernels_avx2());
#endif
  if (name == cpu::kernels_generic().name) return cpu::g_forced.store(&cpu::kernels_generic());
  throw std::invalid_argument("cpu isa '" + name + "' is not supported on this machine");
}

namespace {
std::atomic<int> g_threads{0};
// The process whose OpenMP runtime has a thread team. GNU libgomp's team does not survive fork():
// a child that starts a parallel region of its own waits forever for threads that exist only in
// the parent. A forked child therefore runs ig3d's kernels on its calling thread.
std::atomic<long> g_team_pid{0};
}

int team_threads(int requested) {
  if (requested <= 1) return 1;
#ifdef _WIN32
  const long pid = long(_getpid());
#else
  const long pid = long(getpid());
#endif
  long owner = 0;
  g_team_pid.compare_exchange_strong(owner, pid);  // the first process to ask owns the team
  return g_team_pid.load() == pid ? requested : 1;
}

int default_threads() {
  const int n = g_threads.load();
  if (n > 0) return n;
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

void set_default_threads(int n) { g_threads.store(n > 0 ? n : 0); }

// ---------------------------------------------------------------------------------------------
// Building a head

namespace {
[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument(msg); }

int32_t round16(int64_t v) { return static_cast<int32_t>((v + 15) / 16 * 16); }

bool all_finite(const std::vector<float>& v) {
  for (float x : v)
    if (!std::isfinite(x)) return false;
  return true;
}
}  // namespace

Head::~Head() = default;

const char* Head::isa() const { return isa_->name; }

Head::Head(HeadSpec spec) : spec_(std::move(spec)) {
  const HeadSpec& s = spec_;
  const int32_t d_sel = static_cast<int32_t>(s.select.size());
  const int32_t L = static_cast<int32_t>(s.layers.size());
  if (s.d_raw <= 0) bad("input_dim must be positive, got " + std::to_string(s.d_raw));
  if (d_sel <= 0) bad("select must not be empty");
  if (static_cast<int32_t>(s.mean.size()) != d_sel || static_cast<int32_t>(s.inv_std.size()) != d_sel)
    bad("mean and std must have " + std::to_string(d_sel) + " entries (one per selected input), got " +
        std::to_string(s.mean.size()) + " and " + std::to_string(s.inv_std.size()));
  for (int32_t i = 0; i < d_sel; ++i)
    if (s.select[i] < 0 || s.select[i] >= s.d_raw)
      bad("select[" + std::to_string(i) + "] = " + std::to_string(s.select[i]) + " is outside [0, " +
          std::to_string(s.d_raw) + ")");
  if (!all_finite(s.mean) || !all_finite(s.inv_std)) bad("mean/std contain NaN or inf");
  if (L == 0) bad("a head needs at least one layer");
  if (s.concat_at < -1 || s.concat_at >= L)
    bad("concat_at must be -1 or in [0, " + std::to_string(L) + "), got " + std::to_string(s.concat_at));
  if ((s.concat_at >= 0) != (s.f2d > 0))
    bad("features2d_dim must be > 0 exactly when concat_at is set (concat_at=" +
        std::to_string(s.concat_at) + ", features2d_dim=" + std::to_string(s.f2d) + ")");

  // Scratch row: x_0, x_1 .. x_L, then the concatenated vector.
  std::vector<int32_t> x_off(L + 1), x_width(L + 1);
  x_off[0] = 0;
  x_width[0] = d_sel;
  int32_t cursor = round16(d_sel);
  for (int32_t l = 0; l < L; ++l) {
    x_off[l + 1] = cursor;
    x_width[l + 1] = s.layers[l].out;
    cursor += round16(s.layers[l].out);
  }
  int32_t concat_off = -1;
  if (s.concat_at >= 0) {
    concat_off = cursor;
    cursor += round16(static_cast<int64_t>(x_width[s.concat_at]) + s.f2d);
  }

  int64_t w_total = 0, b_total = 0;
  for (int32_t l = 0; l < L; ++l) {
    const LayerSpec& ls = s.layers[l];
    const std::string name = "layers[" + std::to_string(l) + "]";
    const int32_t expect_in = l == s.concat_at ? x_width[l] + s.f2d : x_width[l];
    if (ls.in != expect_in)
      bad(name + ".weight: expected " + std::to_string(expect_in) + " input columns, got " +
          std::to_string(ls.in));
    if (ls.out <= 0) bad(name + ": output width must be positive");
    if (static_cast<int64_t>(ls.weight.size()) != static_cast<int64_t>(ls.in) * ls.out)
      bad(name + ".weight: expected " + std::to_string(ls.out) + "x" + std::to_string(ls.in) +
          " values, got " + std::to_string(ls.weight.size()));
    if (static_cast<int32_t>(ls.bias.size()) != ls.out)
      bad(name + ".bias: expected " + std::to_string(ls.out) + " values, got " + std::to_string(ls.bias.size()));
    if (!all_finite(ls.weight) || !all_finite(ls.bias)) bad(name + ": weights contain NaN or inf");
    if (ls.act < kActNone || ls.act > kActSigmoid) bad(name + ": unknown activation " + std::to_string(ls.act));
    if (ls.skip_from != -1) {
      if (ls.skip_from < 0 || ls.skip_from > l)
        bad(name + ".skip_from must be in [0, " + std::to_string(l) + "], got " + std::to_string(ls.skip_from));
      if (x_width[ls.skip_from] != ls.out)
        bad(name + ".skip_from: x_" + std::to_string(ls.skip_from) + " has width " +
            std::to_string(x_width[ls.skip_from]) + ", the layer outputs " + std::to_string(ls.out));
    }
    LayerDesc d{};
    d.in = ls.in;
    d.out = ls.out;
    d.act = ls.act;
    d.slope = ls.slope;
    d.in_offset = l == s.concat_at ? concat_off : x_off[l];
    d.out_offset = x_off[l + 1];
    d.skip_offset = ls.skip_from >= 0 ? x_off[ls.skip_from] : -1;
    d.w_offset = w_total;
    d.b_offset = b_total;
    layers_.push_back(d);
    w_total += static_cast<int64_t>(ls.in) * ls.out;
    b_total += ls.out;
    macs_per_row_ += static_cast<int64_t>(ls.in) * ls.out;
  }
  const int32_t O = s.layers.back().out;
  if (s.num_classes < 0 || s.num_classes > O)
    bad("num_classes must be in [0, " + std::to_string(O) + "], got " + std::to_string(s.num_classes));
  if (s.va_index != -1 && (s.va_index < 0 || s.va_index + 2 > O))
    bad("va_index must be -1 or in [0, " + std::to_string(O - 2) + "], got " + std::to_string(s.va_index));
  if (s.fusion_mode < kFuseNone || s.fusion_mode > kFuseWeighted) bad("unknown fusion mode");
  const int32_t k2d = static_cast<int32_t>(s.fusion_map.size());
  if (static_cast<int32_t>(s.w2d.size()) != k2d || static_cast<int32_t>(s.w3d.size()) != k2d)
    bad("fusion weights must have one entry per 2D score");
  for (int32_t k = 0; k < k2d; ++k)
    if (s.fusion_map[k] < 0 || s.fusion_map[k] >= O)
      bad("fusion_map[" + std::to_string(k) + "] = " + std::to_string(s.fusion_map[k]) + " is outside [0, " +
          std::to_string(O) + ")");
  if (!all_finite(s.w2d) || !all_finite(s.w3d)) bad("fusion weights contain NaN or inf");

  weights_.reserve(w_total);
  biases_.reserve(b_total);
  for (const LayerSpec& ls : s.layers) {
    weights_.insert(weights_.end(), ls.weight.begin(), ls.weight.end());
    biases_.insert(biases_.end(), ls.bias.begin(), ls.bias.end());
  }
  // The plain copies are kept for the CUDA path; the per-layer spec weights are not needed twice.
  for (LayerSpec& ls : spec_.layers) {
    std::vector<float>().swap(ls.weight);
    std::vector<float>().swap(ls.bias);
  }

  isa_ = &cpu::best_kernels();
  const int nr = isa_->nr;
  for (int32_t l = 0; l < L; ++l) {
    const LayerDesc& d = layers_[l];
    const int64_t n = static_cast<int64_t>((d.out + nr - 1) / nr) * nr * d.in;
    if (s.bf16) {
      packed_h_.emplace_back(n);
      isa_->pack(weights_.data() + d.w_offset, d.out, d.in, packed_h_.back().data(), true);
    } else {
      packed_f_.emplace_back(n);
      isa_->pack(weights_.data() + d.w_offset, d.out, d.in, packed_f_.back().data(), false);
    }
  }

  HeadDesc& h = desc_;
  h.d_raw = s.d_raw;
  h.d_sel = d_sel;
  h.select = spec_.select.data();
  h.mean = spec_.mean.data();
  h.inv_std = spec_.inv_std.data();
  h.num_layers = L;
  h.layers = layers_.data();
  h.concat_at = s.concat_at;
  h.concat_2d_first = s.concat_2d_first ? 1 : 0;
  h.f2d = s.f2d;
  h.concat_offset = concat_off;
  h.scratch_width = cursor;
  h.out_dim = O;
  h.num_classes = s.num_classes;
  h.va_index = s.va_index;
  h.fusion_mode = s.fusion_mode;
  h.k2d = k2d;
  h.fusion_map = spec_.fusion_map.data();
  h.w2d = spec_.w2d.data();
  h.w3d = spec_.w3d.data();
}

// ---------------------------------------------------------------------------------------------
// Running a head on the CPU

void Head::forward_cpu(const float* params3d, const float* scores2d, const float* features2d, int64_t B,
                       float* probs, float* logits, float* va, float* out3d, int threads) const {
  if (B <= 0) return;
  const HeadDesc& h = desc_;
  const int64_t ld = h.scratch_width;
  const int32_t O = h.out_dim, C = h.num_classes;
  // Scratch is per calling thread, so concurrent calls (camera threads) never share it.
  thread_local std::vector<float> scratch, fused;
  if (static_cast<int64_t>(scratch.size()) < B * ld) scratch.resize(B * ld);
  if (static_cast<int64_t>(fused.size()) < B * O) fused.resize(B * O);
  float* sc = scratch.data();
  float* fu = fused.data();

  int nt = team_threads(threads > 0 ? threads : default_threads());
  // A fork/join costs a few microseconds: not worth it for small heads at small batches.
  if (B * macs_per_row_ < (int64_t{1} << 18)) nt = 1;
  const int RG = std::max(1, 64 / isa_->mr) * isa_->mr;  // rows per task: whole register tiles
  const int nr = isa_->nr;
  const int32_t last_off = layers_.back().out_offset;

  // The body's `omp for` loops are orphaned: inside the parallel region they split the work, and
  // called directly (one thread) they run serially without the cost of a fork/join.
  auto body = [&]() {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < B; ++r) normalise_row(h, params3d + r * h.d_raw, sc + r * ld);

    for (int32_t l = 0; l < h.num_layers; ++l) {
      const LayerDesc& Ld = layers_[l];
      if (l == h.concat_at) {
        const int32_t xw = Ld.in - h.f2d;
        const int32_t x_src = l == 0 ? 0 : layers_[l - 1].out_offset;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < B; ++r) {
          float* dst = sc + r * ld + h.concat_offset;
          const float* x = sc + r * ld + x_src;
          const float* f = features2d + r * h.f2d;
          if (h.concat_2d_first) {
            std::memcpy(dst, f, sizeof(float) * h.f2d);
            std::memcpy(dst + h.f2d, x, sizeof(float) * xw);
          } else {
            std::memcpy(dst, x, sizeof(float) * xw);
            std::memcpy(dst + xw, f, sizeof(float) * h.f2d);
          }
        }
      }
      cpu::GemmArgs a;
      a.packed = spec_.bf16 ? static_cast<const void*>(packed_h_[l].data())
                            : static_cast<const void*>(packed_f_[l].data());
      a.bf16 = spec_.bf16;
      a.bias = biases_.data() + Ld.b_offset;
      a.layer = Ld;
      a.scratch = sc;
      a.ld = ld;
      const int64_t ncb = (Ld.out + nr - 1) / nr;
      const int64_t nrg = (B + RG - 1) / RG;
      // Dynamic in runs of 8 column blocks: on a busy machine (camera threads, other
      // processes) a descheduled thread must not hold the others at the layer's barrier with a
      // whole static share, while each run stays contiguous so the next-panel prefetch pays off
      // (chunks of 1 lost 30 % at batch 64).
#pragma omp for schedule(dynamic, 8)
      for (int64_t t = 0; t < ncb * nrg; ++t) {
        const int64_t cb = t / nrg, rg = t % nrg;
        const int64_t r0 = rg * RG, r1 = std::min<int64_t>(B, r0 + RG);
        isa_->gemm_tile(a, static_cast<int>(cb), static_cast<int>(r0), static_cast<int>(r1));
      }
    }

#pragma omp for schedule(static)
    for (int64_t r = 0; r < B; ++r) {
      const float* o3 = sc + r * ld + last_off;
      std::memcpy(out3d + r * O, o3, sizeof(float) * O);
      finish_row(h, o3, scores2d ? scores2d + r * h.k2d : nullptr, fu + r * O, logits + r * C, probs + r * C,
                 va ? va + r * 2 : nullptr);
    }
  };
  if (nt > 1) {
#pragma omp parallel num_threads(nt)
    body();
  } else {
    body();
  }
}

void fuse_scores(const float* s2d, const float* s3d, float* out, int64_t n, int32_t mode, float w2d,
                 float w3d) {
  for (int64_t i = 0; i < n; ++i) out[i] = combine_scores(s2d[i], s3d[i], mode, w2d, w3d);
}

}  // namespace ig3d
