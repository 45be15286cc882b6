#include "runtime/harness.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <limits>
#include <optional>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "jitattn/error.h"
#include "runtime/backend.h"
#include "runtime/device/driver.h"
#include "runtime/numeric.h"
#include "runtime/reference.h"

namespace jitattn::harness {
namespace {

// A tensor generated on the host and mirrored on the device; for the CPU backend the host copy is
// the one the kernel uses. Storage is over-allocated so the host copy can be 64-byte aligned like
// device memory (the reference validates alignment too).
struct Mirrored {
  std::vector<std::byte> host_storage;
  std::byte* host = nullptr;
  size_t bytes = 0;
  bool gpu = true;
  device::DeviceBuffer dev;
  TensorRef host_ref, dev_ref;

  void alloc(size_t n, bool on_gpu) {
    bytes = n;
    gpu = on_gpu;
    host_storage.assign(n + 64, std::byte{0});
    auto addr = reinterpret_cast<uintptr_t>(host_storage.data());
    host = host_storage.data() + ((64 - addr % 64) % 64);
    if (gpu) dev = device::DeviceBuffer(n);
  }
  // The pointer the kernel uses.
  void* data() const { return gpu ? dev.data() : static_cast<void*>(host); }
  void upload() {
    if (gpu) dev.upload(host, bytes);
  }
  // Every byte set to `byte` where the kernel writes.
  void fill(uint8_t byte) {
    if (gpu) {
      dev.fill(byte);
    } else {
      std::memset(host, byte, bytes);
    }
  }
  // The kernel's result, as bytes.
  std::vector<std::byte> download() const {
    std::vector<std::byte> out(bytes);
    if (gpu) {
      dev.download(out.data(), bytes);
    } else if (bytes > 0) {
      std::memcpy(out.data(), host, bytes);
    }
    return out;
  }
};

// Strides for logical dims laid out physically in `perm` order (perm[0] outermost).
std::array<int64_t, 4> permuted_strides(const std::array<int64_t, 4>& shape, const std::array<int, 4>& perm) {
  std::array<int64_t, 4> stride{};
  int64_t s = 1;
  for (int i = 3; i >= 0; --i) {
    const auto d = static_cast<size_t>(perm[static_cast<size_t>(i)]);
    stride[d] = s;
    s *= shape[d];
  }
  return stride;
}

void make_tensor(Mirrored& m, bool gpu, DType dt, std::array<int64_t, 4> shape, std::array<int, 4> perm,
                 std::mt19937_64& rng, float lo, float hi) {
  int64_t n = 1;
  for (auto s : shape) n *= s;
  m.alloc(static_cast<size_t>(n) * static_cast<size_t>(dtype_size(dt)), gpu);
  std::uniform_real_distribution<float> dist(lo, hi);
  for (int64_t i = 0; i < n; ++i) store_from_float(m.host, dt, i, dist(rng));
  m.upload();
  const auto stride = permuted_strides(shape, perm);
  m.host_ref = TensorRef{m.host, dt, shape, stride};
  m.dev_ref = TensorRef{m.data(), dt, shape, stride};
}

template <typename T>
void make_array(Mirrored& m, bool gpu, const std::vector<T>& values) {
  m.alloc(values.size() * sizeof(T), gpu);
  std::memcpy(m.host, values.data(), m.bytes);
  m.upload();
}

// Everything one run needs, on host and device.
struct Setup {
  Mirrored q, k, v, o, lse, bias, slopes, cu_q, cu_k, used_q, used_k;
  AttentionArgs dev_args, host_args;
  uint64_t seed = 0;
  // Backward (built on first use): dO, the gradients, the workspace.
  bool has_backward = false;
  Mirrored d_o, dq, dk, dv, dbias;
  BackwardArgs grads;
  Mirrored workspace[2];  // [deterministic]
};

void build(Setup& s, const ProblemDesc& d, bool gpu) {
  s.seed = d.seed ? d.seed : std::random_device{}() | (uint64_t{std::random_device{}()} << 32);
  std::mt19937_64 rng(s.seed);
  AttentionArgs& a = s.dev_args;
  a.device = gpu ? d.device : Device::cpu();
  a.mask = d.mask;
  a.window = d.window;
  a.scale = d.scale;
  a.softcap = d.softcap;
  a.varlen = d.varlen;
  a.dropout_p = d.dropout_p;
  a.dropout_seed = rng();
  a.dropout_offset = rng();

  int64_t rows_q = d.seqlen_q, rows_k = d.seqlen_k, batch = d.batch;
  if (d.varlen != VarlenKind::none) {
    // Random lengths in [1, seqlen]; the first batch keeps the full length so the maxima are hit.
    std::vector<int32_t> lq(static_cast<size_t>(d.batch)), lk(static_cast<size_t>(d.batch));
    for (int b = 0; b < d.batch; ++b) {
      lq[static_cast<size_t>(b)] = b == 0 ? d.seqlen_q : std::uniform_int_distribution<int32_t>(1, d.seqlen_q)(rng);
      lk[static_cast<size_t>(b)] = b == 0 ? d.seqlen_k : std::uniform_int_distribution<int32_t>(1, d.seqlen_k)(rng);
    }
    if (d.varlen == VarlenKind::packed) {
      std::vector<int32_t> cq{0}, ck{0};
      for (int b = 0; b < d.batch; ++b) {
        cq.push_back(cq.back() + lq[static_cast<size_t>(b)]);
        ck.push_back(ck.back() + lk[static_cast<size_t>(b)]);
      }
      rows_q = cq.back();
      rows_k = ck.back();
      batch = 1;
      make_array(s.cu_q, gpu, cq);
      make_array(s.cu_k, gpu, ck);
      a.cu_seqlens_q = static_cast<const int32_t*>(s.cu_q.data());
      a.cu_seqlens_k = static_cast<const int32_t*>(s.cu_k.data());
      a.batch = d.batch;
      a.max_seqlen_q = d.seqlen_q;
      a.max_seqlen_k = d.seqlen_k;
    } else {
      make_array(s.used_q, gpu, lq);
      make_array(s.used_k, gpu, lk);
      a.seqused_q = static_cast<const int32_t*>(s.used_q.data());
      a.seqused_k = static_cast<const int32_t*>(s.used_k.data());
    }
  }
  const int dv = d.dv();
  make_tensor(s.q, gpu, d.dtype, {batch, rows_q, d.heads_q, d.head_dim}, d.layout, rng, -1.f, 1.f);
  make_tensor(s.k, gpu, d.dtype, {batch, rows_k, d.heads_kv, d.head_dim}, d.layout, rng, -1.f, 1.f);
  make_tensor(s.v, gpu, d.dtype, {batch, rows_k, d.heads_kv, dv}, d.layout, rng, -1.f, 1.f);
  make_tensor(s.o, gpu, d.dtype, {batch, rows_q, d.heads_q, dv}, d.layout, rng, -1.f, 1.f);
  a.q = s.q.dev_ref;
  a.k = s.k.dev_ref;
  a.v = s.v.dev_ref;
  a.o = s.o.dev_ref;
  if (d.lse) {
    const int64_t n = (d.varlen == VarlenKind::packed) ? d.heads_q * rows_q
                                                        : int64_t{d.batch} * d.heads_q * d.seqlen_q;
    s.lse.alloc(static_cast<size_t>(n) * sizeof(float), gpu);
    a.lse = static_cast<float*>(s.lse.data());
  }
  if (d.bias != "none") {
    if (d.bias.size() != 4) throw InvalidArgument("bias", fmt::format("expected 4 characters over [b|1][h|1][q|1][k|1], got '{}'", d.bias));
    const char want[4] = {'b', 'h', 'q', 'k'};
    const int64_t full[4] = {d.batch, d.heads_q, d.seqlen_q, d.seqlen_k};
    std::array<int64_t, 4> shape{};
    for (size_t i = 0; i < 4; ++i) {
      if (d.bias[i] != want[i] && d.bias[i] != '1') {
        throw InvalidArgument("bias", fmt::format("position {} must be '{}' or '1', got '{}'", i, want[i], d.bias));
      }
      shape[i] = d.bias[i] == '1' ? 1 : full[i];
    }
    make_tensor(s.bias, gpu, d.dtype, shape, {0, 1, 2, 3}, rng, -2.f, 2.f);
    a.bias = s.bias.dev_ref;
  }
  if (d.alibi) {
    std::vector<float> slopes(static_cast<size_t>(d.heads_q));
    for (int h = 0; h < d.heads_q; ++h) slopes[static_cast<size_t>(h)] = std::exp2(-8.0f * float(h + 1) / float(d.heads_q));
    make_array(s.slopes, gpu, slopes);
    a.alibi_slopes = static_cast<const float*>(s.slopes.data());
  }

  // The same problem with host pointers, for the reference.
  AttentionArgs& h = s.host_args;
  h = a;
  h.q = s.q.host_ref;
  h.k = s.k.host_ref;
  h.v = s.v.host_ref;
  h.o = s.o.host_ref;
  h.lse = nullptr;
  h.device = Device::cpu();
  if (d.bias != "none") h.bias = s.bias.host_ref;
  if (d.alibi) h.alibi_slopes = reinterpret_cast<const float*>(s.slopes.host);
  if (a.cu_seqlens_q) {
    h.cu_seqlens_q = reinterpret_cast<const int32_t*>(s.cu_q.host);
    h.cu_seqlens_k = reinterpret_cast<const int32_t*>(s.cu_k.host);
  }
  if (a.seqused_q) {
    h.seqused_q = reinterpret_cast<const int32_t*>(s.used_q.host);
    h.seqused_k = reinterpret_cast<const int32_t*>(s.used_k.host);
  }
}

void synchronize(bool gpu) {
  if (gpu) JITATTN_CU_CHECK(device::driver().cuCtxSynchronize());
}
// Random dO and gradient buffers laid out like o / q / k / v (and bias for dbias), on the GPU or
// in host memory for the CPU backend.
void build_backward(Setup& s, const ProblemDesc& d, bool gpu) {
  std::mt19937_64 rng(s.seed ^ 0x9e3779b97f4a7c15ull);
  make_tensor(s.d_o, gpu, d.dtype, s.o.dev_ref.shape, d.layout, rng, -1.f, 1.f);
  make_tensor(s.dq, gpu, d.dtype, s.q.dev_ref.shape, d.layout, rng, -1.f, 1.f);
  make_tensor(s.dk, gpu, d.dtype, s.k.dev_ref.shape, d.layout, rng, -1.f, 1.f);
  make_tensor(s.dv, gpu, d.dtype, s.v.dev_ref.shape, d.layout, rng, -1.f, 1.f);
  s.grads.d_o = s.d_o.dev_ref;
  s.grads.dq = s.dq.dev_ref;
  s.grads.dk = s.dk.dev_ref;
  s.grads.dv = s.dv.dev_ref;
  if (d.dbias) {
    if (d.bias == "none") throw InvalidArgument("dbias", "needs a bias (--bias)");
    make_tensor(s.dbias, gpu, d.dtype, s.bias.dev_ref.shape, {0, 1, 2, 3}, rng, -1.f, 1.f);
    s.grads.dbias = s.dbias.dev_ref;
  }
  for (int det = 0; det < 2; ++det) {
    BackwardOptions o;
    o.deterministic = det == 1;
    s.workspace[det].alloc(Engine::backward_workspace_bytes(s.dev_args, s.grads, o), gpu);
  }
  s.has_backward = true;
}

// A kernel-written tensor's elements in logical [d0][d1][d2][d3] order.
std::vector<double> download_logical(const Mirrored& m, DType dt) {
  const std::vector<std::byte> host = m.download();
  const auto& sh = m.dev_ref.shape;
  const auto& st = m.dev_ref.stride;
  std::vector<double> out;
  out.reserve(static_cast<size_t>(sh[0] * sh[1] * sh[2] * sh[3]));
  for (int64_t a = 0; a < sh[0]; ++a)
    for (int64_t b = 0; b < sh[1]; ++b)
      for (int64_t c = 0; c < sh[2]; ++c)
        for (int64_t e = 0; e < sh[3]; ++e)
          out.push_back(load_as_double(host.data(), dt, a * st[0] + b * st[1] + c * st[2] + e * st[3]));
  return out;
}


double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const auto i = static_cast<size_t>(std::lround(q * double(v.size() - 1)));
  return v[i];
}

}  // namespace

MaskKind parse_mask(const std::string& s) {
  if (s == "none") return MaskKind::none;
  if (s == "causal") return MaskKind::causal;
  if (s == "causal-bottom-right" || s == "causal_bottom_right") return MaskKind::causal_bottom_right;
  throw InvalidArgument("mask", fmt::format("expected none, causal or causal-bottom-right, got '{}'", s));
}

VarlenKind parse_varlen(const std::string& s) {
  if (s == "none" || s == "0" || s == "off") return VarlenKind::none;
  if (s == "packed" || s == "1" || s == "on") return VarlenKind::packed;
  if (s == "padded") return VarlenKind::padded;
  throw InvalidArgument("varlen", fmt::format("expected none, packed or padded, got '{}'", s));
}

Device resolve_device(Device device) {
  if (device.kind != Device::Kind::automatic) return device;
  return device::driver_available() && device::device_count() > 0 ? Device::cuda(0) : Device::cpu();
}

std::string describe(const ProblemDesc& d) {
  std::string s = fmt::format("{} b{} hq{} hkv{} sq{} sk{} d{} dv{}", dtype_name(d.dtype), d.batch, d.heads_q,
                              d.heads_kv, d.seqlen_q, d.seqlen_k, d.head_dim, d.dv());
  if (d.mask == MaskKind::causal) s += " causal";
  if (d.mask == MaskKind::causal_bottom_right) s += " causal-bottom-right";
  if (d.window) s += fmt::format(" window={},{}", d.window->left, d.window->right);
  if (d.alibi) s += " alibi";
  if (d.bias != "none") s += " bias=" + d.bias;
  if (d.softcap > 0) s += fmt::format(" softcap={}", d.softcap);
  if (d.scale) s += fmt::format(" scale={}", *d.scale);
  if (d.varlen == VarlenKind::packed) s += " varlen=packed";
  if (d.varlen == VarlenKind::padded) s += " varlen=padded";
  if (d.lse) s += " lse";
  if (d.dropout_p > 0) s += fmt::format(" dropout={}", d.dropout_p);
  if (d.dbias) s += " dbias";
  if (d.layout != std::array<int, 4>{0, 1, 2, 3}) s += " layout=bhsd";
  return s;
}

double forward_flops(const ProblemDesc& d) {
  // As peers.py: causal halves the work; a window of W keys counts W / seqlen_k of it instead.
  double f = 2.0 * d.batch * d.heads_q * double(d.seqlen_q) * double(d.seqlen_k) * (d.head_dim + d.dv());
  if (d.window && d.window->left >= 0) return f * std::min(1.0, double(d.window->left + 1) / d.seqlen_k);
  if (d.mask != MaskKind::none) f /= 2;
  return f;
}

namespace {
// Whether to time another repetition: `reps` of them when positive, else until `budget_ms` is
// spent (at least `min_reps`, at most 1000).
bool more_reps(size_t done, double total_ms, double budget_ms, int reps, size_t min_reps) {
  if (reps > 0) return done < static_cast<size_t>(reps);
  return (total_ms < budget_ms || done < min_reps) && done < 1000;
}

// Median, p20/p80 and the FLOP rate of timed repetitions.
void summarize(BenchResult& r, const std::vector<double>& times, const ProblemDesc& d) {
  r.samples = static_cast<int>(times.size());
  r.median_ms = percentile(times, 0.5);
  r.p20_ms = percentile(times, 0.2);
  r.p80_ms = percentile(times, 0.8);
  r.flops = forward_flops(d);
  r.tflops = r.flops / (r.median_ms * 1e-3) / 1e12;
}
}  // namespace

struct Runner::Impl {
  ProblemDesc desc;
  bool gpu = true;
  std::optional<device::ScopedContext> ctx;
  Setup setup;
  std::optional<reference::Result> ref;  // computed on the first check
  std::optional<reference::Gradients> ref_grads;  // computed on the first backward check
  std::unique_ptr<device::DeviceBuffer> flush;

  explicit Impl(const ProblemDesc& d) : desc(d) {
    desc.device = resolve_device(d.device);
    gpu = desc.device.kind == Device::Kind::cuda;
    if (gpu) {
      ctx.emplace(desc.device.ordinal);
    } else {
      cpu_backend();  // says so now when this build has no CPU backend
    }
    build(setup, desc, gpu);
  }
};

namespace {
// The device's context, current for the scope of a call (nothing on the CPU).
struct Scope {
  std::optional<device::ScopedContext> ctx;
  explicit Scope(const Runner::Impl& impl) {
    if (impl.gpu) ctx.emplace(impl.desc.device.ordinal);
  }
};
}  // namespace

Runner::Runner(const ProblemDesc& desc) : impl_(std::make_unique<Impl>(desc)) {}
Runner::~Runner() = default;

CheckResult Runner::check(Engine& engine, const ForwardOptions& options) {
  const Scope scope(*impl_);
  const ProblemDesc& d = impl_->desc;
  Setup& s = impl_->setup;
  const bool gpu = impl_->gpu;
  // Poison: 0xFF bytes are NaN in f16, bf16 and f32, so an unwritten element fails the check.
  s.o.fill(0xFF);
  if (d.lse) s.lse.fill(0xFF);
  synchronize(gpu);

  CheckResult r;
  r.seed = s.seed;
  r.kernel = engine.forward(s.dev_args, options);
  synchronize(gpu);

  const std::vector<std::byte> o_host = s.o.download();
  if (!impl_->ref) impl_->ref = reference::forward(s.host_args);
  const reference::Result& ref = *impl_->ref;

  // Gather the device output in the reference's [rows][heads][dv] order through o's strides.
  const auto& sh = s.o.dev_ref.shape;
  const auto& st = s.o.dev_ref.stride;
  std::vector<double> got;
  got.reserve(ref.out.size());
  for (int64_t b = 0; b < sh[0]; ++b)
    for (int64_t i = 0; i < sh[1]; ++i)
      for (int64_t h = 0; h < sh[2]; ++h)
        for (int64_t c = 0; c < sh[3]; ++c)
          got.push_back(load_as_double(o_host.data(), d.dtype, b * st[0] + i * st[1] + h * st[2] + c * st[3]));
  // Relative-norm tolerances of the storage format (f32: the CPU backend's fp32 compute).
  r.tolerance = d.dtype == DType::f32 ? 1e-5 : d.dtype == DType::f16 ? 2e-3 : 1e-2;
  if (got.size() != ref.out.size()) {
    r.rel_err = r.max_abs_err = std::numeric_limits<double>::infinity();
    return r;
  }
  r.rel_err = relative_error(got, ref.out);
  if (std::getenv("JITATTN_DEBUG_CHECK") != nullptr) {  // dump the first rows for diagnosis
    const size_t dvs = static_cast<size_t>(d.dv());
    for (size_t row = 0; row * dvs < got.size() && row < 64; ++row) {
      double e = 0;
      for (size_t c = 0; c < dvs; ++c) e = std::max(e, std::fabs(got[row * dvs + c] - ref.out[row * dvs + c]));
      fmt::print(stderr, "row {:4d} maxerr {:.4f} got {:.4f} {:.4f} ref {:.4f} {:.4f}\n", row, e, got[row * dvs],
                 got[row * dvs + 1], ref.out[row * dvs], ref.out[row * dvs + 1]);
    }
  }
  r.max_abs_err = max_abs_error(got, ref.out);
  r.pass = r.rel_err < r.tolerance;

  if (d.lse) {
    std::vector<float> lse(s.lse.bytes / sizeof(float));
    const std::vector<std::byte> lse_bytes = s.lse.download();
    if (!lse.empty()) std::memcpy(lse.data(), lse_bytes.data(), s.lse.bytes);
    std::vector<double> g, want;
    for (size_t i = 0; i < lse.size() && i < ref.lse.size(); ++i) {
      const bool ref_inf = std::isinf(ref.lse[i]);
      const bool got_inf = std::isinf(lse[i]) && lse[i] < 0;
      if (ref_inf != got_inf || std::isnan(lse[i])) r.lse_inf_match = false;
      if (!ref_inf && !got_inf) {
        g.push_back(lse[i]);
        want.push_back(ref.lse[i]);
      }
    }
    r.lse_rel_err = g.empty() ? 0.0 : relative_error(g, want);
    // LSE is fp32 in the kernel; its error is dominated by exp2/log2 approximations.
    r.pass = r.pass && r.lse_inf_match && lse.size() == ref.lse.size() && r.lse_rel_err < 1e-3;
  }
  return r;
}

KernelReport Runner::run(Engine& engine, const ForwardOptions& options) {
  const Scope scope(*impl_);
  return engine.forward(impl_->setup.dev_args, options);
}

BenchResult Runner::bench(Engine& engine, const ForwardOptions& options, double budget_ms, int reps) {
  const Scope scope(*impl_);
  const ProblemDesc& d = impl_->desc;
  Setup& s = impl_->setup;
  if (!impl_->gpu) {
    // CPU: calls are synchronous; a steady clock around each one.
    BenchResult r;
    r.kernel = engine.forward(s.dev_args, options);  // compile or load + warm-up
    engine.forward(s.dev_args, options);
    std::vector<double> times;
    double total = 0;
    while (more_reps(times.size(), total, budget_ms, reps, 5)) {
      const auto t0 = std::chrono::steady_clock::now();
      engine.forward(s.dev_args, options);
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      times.push_back(ms);
      total += ms;
    }
    summarize(r, times, d);
    return r;
  }
  // Each repetition starts from a cold L2: writing a buffer twice the L2 evicts the inputs.
  if (!impl_->flush) {
    const device::DeviceInfo info = device::device_info(d.device.ordinal);
    impl_->flush = std::make_unique<device::DeviceBuffer>(static_cast<size_t>(std::max(info.l2_bytes, 1 << 20)) * 2);
  }
  BenchResult r;
  r.kernel = engine.forward(s.dev_args, options);  // compile or load + warm-up
  synchronize(true);
  for (int i = 0; i < 2; ++i) engine.forward(s.dev_args, options);
  synchronize(true);

  device::EventTimer timer;
  std::vector<double> times;
  double total = 0;
  while (more_reps(times.size(), total, budget_ms, reps, 10)) {
    impl_->flush->fill_async(static_cast<uint8_t>(times.size()), nullptr);
    timer.start(nullptr);
    engine.forward(s.dev_args, options);
    timer.stop(nullptr);
    const double ms = timer.elapsed_ms();
    times.push_back(ms);
    total += ms;
  }
  synchronize(true);
  summarize(r, times, d);
  return r;
}

BackwardCheckResult Runner::check_backward(Engine& engine, const BackwardOptions& options,
                                           const ForwardOptions& forward_options) {
  const Scope scope(*impl_);
  const bool gpu = impl_->gpu;
  const ProblemDesc& d = impl_->desc;
  Setup& s = impl_->setup;
  if (!d.lse) throw InvalidArgument("lse", "a backward check needs the forward's LSE (desc.lse)");
  if (!s.has_backward) build_backward(s, d, gpu);
  BackwardCheckResult r;
  r.forward = check(engine, forward_options);  // O and LSE on the device, judged
  r.seed = s.seed;
  for (Mirrored* m : {&s.dq, &s.dk, &s.dv, &s.dbias}) {
    if (m->bytes > 0) m->fill(0xFF);  // NaN: an unwritten gradient fails
  }
  synchronize(gpu);
  BackwardOptions o = options;
  if (o.workspace == nullptr) {
    const auto& ws = s.workspace[o.deterministic ? 1 : 0];
    o.workspace = ws.data();
    o.workspace_bytes = ws.bytes;
  }
  r.kernel = engine.backward(s.dev_args, s.grads, o);
  synchronize(gpu);
  if (!impl_->ref_grads) impl_->ref_grads = reference::backward(s.host_args, s.d_o.host_ref, d.dbias);
  const reference::Gradients& g = *impl_->ref_grads;
  r.dq_err = relative_error(download_logical(s.dq, d.dtype), g.dq);
  r.dk_err = relative_error(download_logical(s.dk, d.dtype), g.dk);
  r.dv_err = relative_error(download_logical(s.dv, d.dtype), g.dv);
  if (d.dbias) {
    // A bias broadcast over the keys has a zero gradient (softmax ignores a per-row constant):
    // the reference holds rounding noise there, so the error is absolute once its norm is, and
    // per sqrt of the score gradients each entry sums (rounding grows with the sum: a scalar bias
    // sums b*h*sq*sk of them), so a 1111 bias is judged like a bhq1 one.
    const std::vector<double> got = download_logical(s.dbias, d.dtype);
    double norm = 0;
    for (double x : g.dbias) norm += x * x;
    if (std::sqrt(norm) > 1e-6) {
      r.dbias_err = relative_error(got, g.dbias);
    } else {
      const double scores = double(d.batch) * d.heads_q * d.seqlen_q * d.seqlen_k;
      const double per_entry = std::max(1.0, scores / double(std::max<size_t>(g.dbias.size(), 1)));
      r.dbias_err = max_abs_error(got, g.dbias) / std::sqrt(per_entry);
    }
  }
  // f32 (CPU): fp32 compute throughout, the exp2 polynomial and sums over the sequence.
  r.tolerance = d.dtype == DType::f32 ? 1e-5 : d.dtype == DType::f16 ? 5e-3 : 2e-2;
  r.pass = r.forward.pass && r.dq_err < r.tolerance && r.dk_err < r.tolerance &&
           r.dv_err < r.tolerance && r.dbias_err < r.tolerance;
  return r;
}

namespace {

std::vector<std::byte> device_bytes(std::initializer_list<const Mirrored*> tensors) {
  std::vector<std::byte> out;
  for (const Mirrored* m : tensors) {
    const size_t at = out.size();
    out.resize(at + m->bytes);
    if (m->bytes > 0) {
      const std::vector<std::byte> bytes = m->download();
      std::memcpy(out.data() + at, bytes.data(), m->bytes);
    }
  }
  return out;
}

}  // namespace

std::vector<std::byte> Runner::output_bytes() const {
  const Scope scope(*impl_);
  return device_bytes({&impl_->setup.o, &impl_->setup.lse});
}

std::vector<std::byte> Runner::gradient_bytes() const {
  const Scope scope(*impl_);
  const Setup& s = impl_->setup;
  return device_bytes({&s.dq, &s.dk, &s.dv, &s.dbias});
}

BenchResult Runner::bench_backward(Engine& engine, bool with_forward, const BackwardOptions& options,
                                   double budget_ms, int reps) {
  const Scope scope(*impl_);
  const bool gpu = impl_->gpu;
  ProblemDesc& d = impl_->desc;
  Setup& s = impl_->setup;
  if (!d.lse) throw InvalidArgument("lse", "backward needs the forward's LSE (desc.lse)");
  if (!s.has_backward) build_backward(s, d, gpu);
  if (gpu && !impl_->flush) {
    const device::DeviceInfo info = device::device_info(d.device.ordinal);
    impl_->flush = std::make_unique<device::DeviceBuffer>(static_cast<size_t>(std::max(info.l2_bytes, 1 << 20)) * 2);
  }
  BackwardOptions o = options;
  if (o.workspace == nullptr) {
    const auto& ws = s.workspace[o.deterministic ? 1 : 0];
    o.workspace = ws.data();
    o.workspace_bytes = ws.bytes;
  }
  auto step = [&] {
    if (with_forward) engine.forward(s.dev_args);
    return engine.backward(s.dev_args, s.grads, o);
  };
  engine.forward(s.dev_args);  // O and LSE for a backward-only timing
  BenchResult r;
  r.kernel = step();
  synchronize(gpu);
  for (int i = 0; i < 2; ++i) step();
  synchronize(gpu);
  std::vector<double> times;
  double total = 0;
  if (!gpu) {  // CPU: synchronous calls, a steady clock around each
    while (more_reps(times.size(), total, budget_ms, reps, 5)) {
      const auto t0 = std::chrono::steady_clock::now();
      step();
      times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      total += times.back();
    }
  }
  std::optional<device::EventTimer> timer;
  if (gpu) timer.emplace();
  while (gpu && more_reps(times.size(), total, budget_ms, reps, 10)) {
    impl_->flush->fill_async(static_cast<uint8_t>(times.size()), nullptr);
    timer->start(nullptr);
    step();
    timer->stop(nullptr);
    const double ms = timer->elapsed_ms();
    times.push_back(ms);
    total += ms;
  }
  synchronize(gpu);
  r.samples = static_cast<int>(times.size());
  r.median_ms = percentile(times, 0.5);
  r.p20_ms = percentile(times, 0.2);
  r.p80_ms = percentile(times, 0.8);
  // ../shared/bench/README.md: backward = 2.5x forward, forward + backward = 3.5x.
  r.flops = forward_flops(d) * (with_forward ? 3.5 : 2.5);
  r.tflops = r.flops / (r.median_ms * 1e-3) / 1e12;
  return r;
}

CheckResult check(Engine& engine, const ProblemDesc& d, const ForwardOptions& options) {
  Runner runner(d);
  return runner.check(engine, options);
}

BenchResult bench(Engine& engine, const ProblemDesc& d, const ForwardOptions& options, double budget_ms,
                  int reps) {
  Runner runner(d);
  return runner.bench(engine, options, budget_ms, reps);
}

}  // namespace jitattn::harness
