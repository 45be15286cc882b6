// Generated CPU kernels against the float64 reference, over the feature grid: every head dim,
// f32/f16/bf16, dv != d, GQA, every mask, sliding windows, packed and padded varlen, every bias
// broadcast and non-contiguous bias strides, ALiBi, softcap, LSE, seqlen 1 and 17, fully masked
// rows, and every CPU tile config. Each case draws fresh random inputs (seed printed, replay
// with JITATTN_TEST_SEED), poisons O and LSE with NaN first, and goes through the real path:
// generate -> device::compile_cpu -> CpuModule::load -> device::parallel_for. One test per group
// of cases, each compiling its kernels on all cores first (ctest runs every test in its own
// process, so nothing is shared between groups).
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "generator/generator.h"
#include "jitattn/error.h"
#include "runtime/device/cpu_jit.h"
#include "runtime/numeric.h"
#include "runtime/plan.h"
#include "runtime/problem.h"
#include "runtime/reference.h"
#include "tests/test_util.h"

namespace jitattn {
namespace {

using test::HostTensor;

struct Case {
  DType dtype = DType::f32;
  int batch = 2;
  int heads_q = 3;
  int heads_kv = 3;
  int seqlen_q = 37;
  int seqlen_k = 53;
  int d = 64;
  int dv = 0;  // 0: d
  MaskKind mask = MaskKind::none;
  std::optional<Window> window;
  VarlenKind varlen = VarlenKind::none;
  std::string bias = "none";  // [b|1][h|1][q|1][k|1]
  bool bias_strided = false;  // bias stored [h][b][q][k] with padded rows
  bool bias_inf_rows = false;  // some bias rows entirely -inf: fully masked rows
  bool alibi = false;
  float softcap = 0.0f;
  std::optional<float> scale;
  bool lse = true;
  std::array<int, 4> layout = {0, 1, 2, 3};
  std::optional<TileConfig> config;  // default_config when empty

  int head_dim_v() const { return dv > 0 ? dv : d; }
};

std::string describe(const Case& c) {
  std::string s = fmt::format("{} b{} hq{} hkv{} sq{} sk{} d{} dv{}", dtype_name(c.dtype), c.batch,
                              c.heads_q, c.heads_kv, c.seqlen_q, c.seqlen_k, c.d, c.head_dim_v());
  if (c.mask == MaskKind::causal) s += " causal";
  if (c.mask == MaskKind::causal_bottom_right) s += " causal_br";
  if (c.window) s += fmt::format(" window({},{})", c.window->left, c.window->right);
  if (c.varlen == VarlenKind::packed) s += " packed";
  if (c.varlen == VarlenKind::padded) s += " padded";
  if (c.bias != "none") s += " bias=" + c.bias + (c.bias_strided ? "(strided)" : "") + (c.bias_inf_rows ? "(-inf rows)" : "");
  if (c.alibi) s += " alibi";
  if (c.softcap > 0.0f) s += fmt::format(" softcap={}", c.softcap);
  if (c.scale) s += fmt::format(" scale={}", *c.scale);
  if (c.lse) s += " lse";
  if (c.layout != std::array<int, 4>{0, 1, 2, 3}) s += " bhsd";
  if (c.config) s += " " + c.config->canonical();
  return s;
}

double tolerance(DType t) {
  switch (t) {
    case DType::f32: return 1e-5;
    case DType::bf16: return 1e-2;
    case DType::f16: return 2e-3;
  }
  return 0;
}

// One problem on the host: inputs, poisoned outputs, the args pointing at them.
struct HostProblem {
  HostTensor q, k, v, o, bias;
  std::vector<float> lse, slopes;
  std::vector<int32_t> cu_q, cu_k, used_q, used_k;
  AttentionArgs args;
};

std::unique_ptr<HostProblem> build(const Case& c, std::mt19937_64& rng) {
  auto hp = std::make_unique<HostProblem>();
  HostProblem& h = *hp;
  AttentionArgs& a = h.args;
  const int dv = c.head_dim_v();
  int64_t b = c.batch, sq = c.seqlen_q, sk = c.seqlen_k;
  std::uniform_int_distribution<int> len_q(0, c.seqlen_q), len_k(0, c.seqlen_k);
  if (c.varlen == VarlenKind::packed) {
    h.cu_q = {0};
    h.cu_k = {0};
    for (int i = 0; i < c.batch; ++i) {
      // The first sequence has the maximum lengths, so max_seqlen is exact.
      h.cu_q.push_back(h.cu_q.back() + (i == 0 ? c.seqlen_q : len_q(rng)));
      h.cu_k.push_back(h.cu_k.back() + (i == 0 ? c.seqlen_k : len_k(rng)));
    }
    a.cu_seqlens_q = h.cu_q.data();
    a.cu_seqlens_k = h.cu_k.data();
    a.batch = c.batch;
    a.max_seqlen_q = c.seqlen_q;
    a.max_seqlen_k = c.seqlen_k;
    b = 1;
    sq = h.cu_q.back();
    sk = h.cu_k.back();
  } else if (c.varlen == VarlenKind::padded) {
    for (int i = 0; i < c.batch; ++i) {
      h.used_q.push_back(len_q(rng));
      h.used_k.push_back(len_k(rng));
    }
    a.seqused_q = h.used_q.data();
    a.seqused_k = h.used_k.data();
  }
  a.varlen = c.varlen;
  h.q = test::random_tensor(c.dtype, {b, sq, c.heads_q, c.d}, rng, -1.0f, 1.0f, c.layout);
  h.k = test::random_tensor(c.dtype, {b, sk, c.heads_kv, c.d}, rng, -1.0f, 1.0f, c.layout);
  h.v = test::random_tensor(c.dtype, {b, sk, c.heads_kv, dv}, rng, -1.0f, 1.0f, c.layout);
  h.o = test::poisoned_tensor(c.dtype, {b, sq, c.heads_q, dv}, c.layout);
  a.q = h.q.ref;
  a.k = h.k.ref;
  a.v = h.v.ref;
  a.o = h.o.ref;
  if (c.bias != "none") {
    const int64_t full[4] = {c.batch, c.heads_q, c.seqlen_q, c.seqlen_k};
    std::array<int64_t, 4> shape{};
    for (size_t i = 0; i < 4; ++i) shape[i] = c.bias[i] == '1' ? 1 : full[i];
    const std::array<int, 4> perm = c.bias_strided ? std::array<int, 4>{1, 0, 2, 3}
                                                   : std::array<int, 4>{0, 1, 2, 3};
    h.bias = test::random_tensor(c.dtype, shape, rng, -2.0f, 2.0f, perm, c.bias_strided ? 5 : 0);
    if (c.bias_inf_rows) {
      // Every third bias row -inf: those query rows see no key at all.
      const TensorRef& t = h.bias.ref;
      for (int64_t i0 = 0; i0 < shape[0]; ++i0)
        for (int64_t i1 = 0; i1 < shape[1]; ++i1)
          for (int64_t i2 = 0; i2 < shape[2]; i2 += 3)
            for (int64_t i3 = 0; i3 < shape[3]; ++i3)
              store_from_float(h.bias.data(), c.dtype,
                               i0 * t.stride[0] + i1 * t.stride[1] + i2 * t.stride[2] + i3 * t.stride[3],
                               -std::numeric_limits<float>::infinity());
    }
    a.bias = h.bias.ref;
  }
  if (c.alibi) {
    std::uniform_real_distribution<float> slope(0.01f, 1.0f);
    for (int i = 0; i < c.heads_q; ++i) h.slopes.push_back(slope(rng));
    a.alibi_slopes = h.slopes.data();
  }
  if (c.lse) {
    h.lse.assign(static_cast<size_t>(b * sq * c.heads_q), std::numeric_limits<float>::quiet_NaN());
    a.lse = h.lse.data();
  }
  a.mask = c.mask;
  a.window = c.window;
  a.softcap = c.softcap;
  a.scale = c.scale;
  return hp;
}

// The spec of a validated problem for the CPU (what the engine's make_spec gives).
KernelSpec cpu_spec(const Problem& p) {
  KernelSpec s;
  s.target.cpu = true;
  s.dtype = p.dtype;
  s.head_dim = p.head_dim;
  s.head_dim_v = p.head_dim_v;
  s.mask = p.mask;
  s.window = p.window;
  s.varlen = p.varlen;
  s.bias = p.bias;
  s.alibi = p.alibi;
  s.scale = p.scale;
  s.softcap = p.softcap;
  s.lse = p.lse;
  return s;
}

struct Built {
  Case c;
  std::unique_ptr<HostProblem> host;
  Problem problem;
  KernelSpec spec;
  TileConfig config;
  std::string name;
};

// Compiled kernels of one test, by name; compiled on all cores at once.
using Modules = std::map<std::string, device::CpuModule>;

Modules compile_all(const std::vector<Built>& built) {
  std::map<std::string, std::string> sources;
  for (const Built& b : built) {
    if (!sources.count(b.name)) sources[b.name] = generate(b.spec, b.config, limits_for_cpu()).source;
  }
  std::vector<std::pair<std::string, std::string>> work(sources.begin(), sources.end());
  std::vector<std::vector<char>> objects(work.size());
  std::vector<std::string> errors(work.size());
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i = next++; i < work.size(); i = next++) {
      try {
        objects[i] = device::compile_cpu(work[i].second, work[i].first).object;
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
    }
  };
  const unsigned n = std::max(1u, std::min<unsigned>(std::thread::hardware_concurrency(),
                                                     static_cast<unsigned>(work.size())));
  std::vector<std::thread> pool;
  for (unsigned t = 1; t < n; ++t) pool.emplace_back(worker);
  worker();
  for (std::thread& t : pool) t.join();
  Modules modules;
  for (size_t i = 0; i < work.size(); ++i) {
    if (!errors[i].empty()) {
      ADD_FAILURE() << work[i].first << " does not compile: " << errors[i];
      continue;
    }
    modules.emplace(work[i].first, device::CpuModule::load(objects[i], work[i].first));
  }
  return modules;
}

void run_kernel(const device::CpuModule& m, const Built& b) {
  const jitattn_kernel::AttnFwdParams params = make_params(b.host->args, b.problem);
  const long long m_blocks = (b.problem.seqlen_q + b.config.block_m - 1) / b.config.block_m;
  const long long items = static_cast<long long>(b.problem.batch) * b.problem.heads_q * m_blocks;
  const device::CpuModule::Kernel k = m.kernel();
  device::parallel_for(items, 1, [&](long long begin, long long end) { k(&params, begin, end); });
}

// Builds, compiles, runs and checks every case with inputs from `rng` (a fresh seeded_rng() when
// null); failures name the case, and the seed is printed at the start.
void check_cases(const std::vector<Case>& cases, std::mt19937_64* rng_in = nullptr) {
  if (!device::cpu_jit_available()) GTEST_SKIP() << "built without LLVM (JITATTN_WITH_LLVM=OFF)";
  std::mt19937_64 own = rng_in ? std::mt19937_64() : test::seeded_rng();
  std::mt19937_64& rng = rng_in ? *rng_in : own;
  std::vector<Built> built;
  for (const Case& c : cases) {
    Built b;
    b.c = c;
    b.host = build(c, rng);
    b.problem = validate(b.host->args);
    b.spec = cpu_spec(b.problem);
    b.config = c.config ? *c.config : default_config(b.spec, limits_for_cpu());
    b.name = generate(b.spec, b.config, limits_for_cpu()).name;
    built.push_back(std::move(b));
  }
  const Modules modules = compile_all(built);
  for (const Built& b : built) {
    SCOPED_TRACE(describe(b.c) + " kernel " + b.name);
    const auto m = modules.find(b.name);
    if (m == modules.end()) continue;  // compile failure reported above
    run_kernel(m->second, b);
    const reference::Result ref = reference::forward(b.host->args);
    const std::vector<double> out = test::to_double(b.host->o.ref);
    const double err = relative_error(out, ref.out);
    EXPECT_LT(err, tolerance(b.c.dtype)) << "O relative error (max abs " << max_abs_error(out, ref.out) << ")";
    if (b.c.lse) {
      const std::vector<double> lse(b.host->lse.begin(), b.host->lse.end());
      // Computed in fp32 from the same (rounded) inputs whatever the dtype.
      EXPECT_LT(relative_error(lse, ref.lse), 1e-5) << "LSE relative error";
    }
  }
}

Case with(Case c, auto&& f) {
  f(c);
  return c;
}

// ---- head dims and dtypes ------------------------------------------------------------------------
TEST(CpuKernel, EveryHeadDimF32) {
  std::vector<Case> cs;
  for (int d = 8; d <= 256; d += 8) {
    cs.push_back(with(Case{}, [&](Case& c) {
      c.d = d;
      c.mask = d % 16 == 0 ? MaskKind::causal : MaskKind::none;
    }));
  }
  check_cases(cs);
}

// Head dims above 256 (up to 512), unequal QK/V dims on both sides of 256, both dtype kinds.
TEST(CpuKernel, HeadDimsAbove256) {
  std::vector<Case> cs;
  for (auto [d, dv] : {std::pair{264, 264}, {384, 384}, {512, 512}, {512, 40}, {56, 512}, {448, 320}}) {
    cs.push_back(with(Case{}, [&](Case& c) {
      c.d = d;
      c.dv = dv;
      c.mask = d == 384 ? MaskKind::none : MaskKind::causal;
      c.heads_q = 4;
      c.heads_kv = 2;
    }));
  }
  for (DType t : {DType::bf16, DType::f16}) {
    cs.push_back(with(Case{}, [&](Case& c) {
      c.dtype = t;
      c.d = 512;
      c.alibi = true;
      c.softcap = 20.0f;
      c.window = Window{30, 3};
      c.varlen = VarlenKind::padded;
    }));
  }
  // The largest blocks the stack budget allows at d = dv = 512.
  cs.push_back(with(Case{}, [&](Case& c) {
    c.config = cpu_config(64, 32);
    c.d = 512;
    c.seqlen_q = 70;
    c.seqlen_k = 130;
  }));
  check_cases(cs);
}

TEST(CpuKernel, HeadDimsHalfDtypes) {
  std::vector<Case> cs;
  for (DType t : {DType::bf16, DType::f16}) {
    for (int d : {8, 72, 80, 96, 128, 256}) {
      cs.push_back(with(Case{}, [&](Case& c) {
        c.dtype = t;
        c.d = d;
        c.mask = d == 96 ? MaskKind::causal : MaskKind::none;
      }));
    }
  }
  check_cases(cs);
}

TEST(CpuKernel, DifferentQkAndVHeadDims) {
  std::vector<Case> cs;
  const std::pair<int, int> dims[] = {{64, 32}, {128, 72}, {8, 256}, {256, 8}, {40, 136}, {192, 128}};
  DType t = DType::f32;
  for (auto [d, dv] : dims) {
    cs.push_back(with(Case{}, [&](Case& c) {
      c.dtype = t;
      c.d = d;
      c.dv = dv;
    }));
    t = t == DType::f32 ? DType::bf16 : t == DType::bf16 ? DType::f16 : DType::f32;
  }
  check_cases(cs);
}

// ---- masks, windows, shapes -------------------------------------------------------------------
TEST(CpuKernel, MasksAndShapes) {
  std::vector<Case> cs;
  for (DType t : {DType::f32, DType::bf16}) {
    for (MaskKind m : {MaskKind::none, MaskKind::causal, MaskKind::causal_bottom_right}) {
      for (auto [sq, sk] : {std::pair{1, 1}, {17, 17}, {1, 300}, {300, 1}, {150, 170}, {170, 150}, {17, 200}}) {
        cs.push_back(with(Case{}, [&](Case& c) {
          c.dtype = t;
          c.mask = m;
          c.seqlen_q = sq;
          c.seqlen_k = sk;
          c.d = 72;
        }));
      }
    }
  }
  check_cases(cs);
}

TEST(CpuKernel, SlidingWindows) {
  std::vector<Case> cs;
  const Window windows[] = {{37, 0}, {5, 7}, {-1, 5}, {3, -1}, {0, 0}, {200, 200}};
  for (const Window& w : windows) {
    for (MaskKind m : {MaskKind::none, MaskKind::causal, MaskKind::causal_bottom_right}) {
      cs.push_back(with(Case{}, [&](Case& c) {
        c.mask = m;
        c.window = w;
        c.seqlen_q = 150;
        c.seqlen_k = 190;
        c.d = 32;
        c.dtype = m == MaskKind::causal ? DType::f16 : DType::f32;
      }));
    }
  }
  // sq > sk with bottom-right alignment: the first rows see no key at all.
  cs.push_back(with(Case{}, [&](Case& c) {
    c.mask = MaskKind::causal_bottom_right;
    c.window = Window{4, 0};
    c.seqlen_q = 200;
    c.seqlen_k = 90;
  }));
  check_cases(cs);
}

TEST(CpuKernel, GroupedQueryAttentionAndLayouts) {
  std::vector<Case> cs;
  for (auto [hq, hkv] : {std::pair{6, 2}, {4, 1}, {8, 8}}) {
    for (bool bhsd : {false, true}) {
      cs.push_back(with(Case{}, [&](Case& c) {
        c.heads_q = hq;
        c.heads_kv = hkv;
        c.mask = MaskKind::causal;
        c.seqlen_q = c.seqlen_k = 130;
        c.dtype = bhsd ? DType::bf16 : DType::f32;
        if (bhsd) c.layout = {0, 2, 1, 3};
      }));
    }
  }
  check_cases(cs);
}

TEST(CpuKernel, VarlenPackedAndPadded) {
  std::vector<Case> cs;
  for (VarlenKind v : {VarlenKind::packed, VarlenKind::padded}) {
    for (MaskKind m : {MaskKind::none, MaskKind::causal, MaskKind::causal_bottom_right}) {
      for (DType t : {DType::f32, DType::f16}) {
        cs.push_back(with(Case{}, [&](Case& c) {
          c.varlen = v;
          c.mask = m;
          c.dtype = t;
          c.batch = 4;
          c.seqlen_q = 97;
          c.seqlen_k = 120;
          c.d = 48;
          c.heads_q = 4;
          c.heads_kv = 2;
        }));
      }
    }
    cs.push_back(with(Case{}, [&](Case& c) {
      c.varlen = v;
      c.window = Window{20, 3};
      c.bias = "bhqk";
      c.alibi = true;
      c.batch = 3;
      c.seqlen_q = 80;
      c.seqlen_k = 70;
    }));
  }
  check_cases(cs);
}

// ---- score modifiers ----------------------------------------------------------------------------
TEST(CpuKernel, BiasBroadcastsAndStrides) {
  std::vector<Case> cs;
  for (const char* b : {"bhqk", "1hqk", "b1qk", "11qk", "b11k", "bh1k", "111k", "bhq1", "1111"}) {
    cs.push_back(with(Case{}, [&](Case& c) {
      c.bias = b;
      c.seqlen_q = 45;
      c.seqlen_k = 70;
    }));
  }
  for (DType t : {DType::f32, DType::bf16, DType::f16}) {
    cs.push_back(with(Case{}, [&](Case& c) {
      c.dtype = t;
      c.bias = "bhqk";
      c.bias_strided = true;
      c.mask = MaskKind::causal;
    }));
  }
  cs.push_back(with(Case{}, [&](Case& c) {
    c.bias = "1hqk";
    c.bias_inf_rows = true;
  }));
  check_cases(cs);
}

TEST(CpuKernel, AlibiSoftcapScale) {
  std::vector<Case> cs;
  for (MaskKind m : {MaskKind::none, MaskKind::causal, MaskKind::causal_bottom_right}) {
    cs.push_back(with(Case{}, [&](Case& c) {
      c.alibi = true;
      c.mask = m;
      c.seqlen_q = 90;
      c.seqlen_k = 110;
    }));
  }
  for (float cap : {0.5f, 5.0f, 50.0f}) {
    cs.push_back(with(Case{}, [&](Case& c) {
      c.softcap = cap;
      c.scale = 1.0f;
      c.dtype = cap == 5.0f ? DType::bf16 : DType::f32;
    }));
  }
  cs.push_back(with(Case{}, [&](Case& c) { c.scale = 0.01f; }));
  cs.push_back(with(Case{}, [&](Case& c) {
    c.scale = 1.0f;
    c.lse = false;
  }));
  // Everything at once.
  for (DType t : {DType::f32, DType::bf16, DType::f16}) {
    cs.push_back(with(Case{}, [&](Case& c) {
      c.dtype = t;
      c.mask = MaskKind::causal_bottom_right;
      c.window = Window{40, 10};
      c.bias = "b1qk";
      c.alibi = true;
      c.softcap = 8.0f;
      c.heads_q = 4;
      c.heads_kv = 2;
      c.d = 80;
      c.dv = 48;
      c.seqlen_q = 100;
      c.seqlen_k = 140;
    }));
  }
  check_cases(cs);
}

// ---- tile configs -------------------------------------------------------------------------------
TEST(CpuKernel, EveryTileConfigGivesTheSameAnswer) {
  std::vector<Case> cs;
  for (int bm : {4, 8, 16, 32, 64}) {
    for (int bn : {16, 32, 64, 128, 256}) {
      cs.push_back(with(Case{}, [&](Case& c) {
        c.config = cpu_config(bm, bn);
        c.d = 72;  // 8 mod 16: the narrow column tail of the O micro-kernel
        c.mask = MaskKind::causal_bottom_right;
        c.window = Window{90, 2};
        c.seqlen_q = 150;
        c.seqlen_k = 170;
        c.softcap = bm == 16 ? 20.0f : 0.0f;
      }));
    }
  }
  // The largest head dims with the largest legal blocks.
  cs.push_back(with(Case{}, [&](Case& c) {
    c.config = cpu_config(64, 64);
    c.d = 256;
    c.seqlen_q = 70;
    c.seqlen_k = 130;
  }));
  check_cases(cs);
}

TEST(CpuKernel, NoKeysWritesZeroAndMinusInfinity) {
  check_cases({with(Case{}, [&](Case& c) {
                 c.seqlen_k = 0;
                 c.seqlen_q = 20;
               }),
               with(Case{}, [&](Case& c) {
                 c.varlen = VarlenKind::padded;
                 c.batch = 5;
                 c.seqlen_q = 33;
                 c.seqlen_k = 3;
               })});
}

// ---- random problems -----------------------------------------------------------------------------
// Shapes and feature combinations drawn at random (the seed printed by seeded_rng replays them):
// whatever the grid above does not think of.
TEST(CpuKernel, RandomProblems) {
  std::mt19937_64 rng = test::seeded_rng();
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  std::vector<Case> cs;
  for (int n = 0; n < 16; ++n) {
    Case c;
    c.dtype = std::array{DType::f32, DType::bf16, DType::f16}[static_cast<size_t>(pick(0, 2))];
    c.d = 8 * pick(1, 32);
    c.dv = pick(0, 2) == 0 ? 8 * pick(1, 32) : 0;
    c.heads_kv = pick(1, 3);
    c.heads_q = c.heads_kv * pick(1, 3);
    c.batch = pick(1, 3);
    c.seqlen_q = pick(0, 3) == 0 ? pick(1, 3) : pick(1, 160);
    c.seqlen_k = pick(0, 3) == 0 ? pick(1, 3) : pick(1, 160);
    c.mask = std::array{MaskKind::none, MaskKind::causal, MaskKind::causal_bottom_right}[static_cast<size_t>(pick(0, 2))];
    if (pick(0, 2) == 0) c.window = Window{pick(-1, 40), pick(-1, 40)};
    c.varlen = std::array{VarlenKind::none, VarlenKind::packed, VarlenKind::padded}[static_cast<size_t>(pick(0, 2))];
    if (pick(0, 2) == 0) {
      std::string b;
      for (const char* dims : {"b1", "h1", "q1", "k1"}) b += dims[pick(0, 1)];
      c.bias = b;
      c.bias_strided = pick(0, 1) == 1;
    }
    c.alibi = pick(0, 2) == 0;
    c.softcap = pick(0, 2) == 0 ? 0.5f * static_cast<float>(pick(1, 60)) : 0.0f;
    if (pick(0, 3) == 0) c.scale = 0.05f * static_cast<float>(pick(1, 30));
    c.lse = pick(0, 1) == 1;
    if (pick(0, 1) == 1) c.layout = {0, 2, 1, 3};
    if (pick(0, 1) == 1) {
      const TileConfig cfg = cpu_config(4 << pick(0, 4), 16 << pick(0, 4));
      KernelSpec probe;
      probe.target = Target{0, true};
      probe.head_dim = c.d;
      probe.head_dim_v = c.head_dim_v();
      if (!why_illegal(probe, cfg, limits_for_cpu())) c.config = cfg;
    }
    cs.push_back(c);
  }
  check_cases(cs, &rng);
}

// ---- the template's number conversions, bit for bit ----------------------------------------------
// The kernels' f16/bf16 conversions (templates/common_cpu.h) against runtime/numeric's: every
// 16-bit pattern in, and on the way out every rounding tie and its neighbours plus a stride
// through all 2^32 floats. The output tolerances above could not see a wrong rounding mode
// (truncating bf16 stays under 1e-2).
constexpr const char* kConvertSource = R"(
struct ConvertParams {
  const unsigned* in;        // f32 bit patterns
  unsigned short* to_bf16;
  unsigned short* to_f16;
  unsigned* from_bf16;       // f32 bits of bf16 pattern i
  unsigned* from_f16;
};
extern "C" void jitattn_test_convert(const void* params, long long begin, long long end) {
  using namespace jitattn_kernel;
  const ConvertParams& p = *static_cast<const ConvertParams*>(params);
  for (long long i = begin; i < end; ++i) {
    const float f = __builtin_bit_cast(float, p.in[i]);
    p.to_bf16[i] = float_to_bf16(f);
    p.to_f16[i] = float_to_f16(f);
  }
  for (unsigned h = 0; h < 65536u; ++h) {
    p.from_bf16[h] = __builtin_bit_cast(unsigned, bf16_to_float(static_cast<u16>(h)));
    p.from_f16[h] = __builtin_bit_cast(unsigned, f16_to_float(static_cast<u16>(h)));
  }
}
)";

struct ConvertParams {
  const uint32_t* in;
  uint16_t* to_bf16;
  uint16_t* to_f16;
  uint32_t* from_bf16;
  uint32_t* from_f16;
};

TEST(CpuKernel, TemplateConversionsMatchTheHostBitForBit) {
  if (!device::cpu_jit_available()) GTEST_SKIP() << "built without LLVM (JITATTN_WITH_LLVM=OFF)";
  const std::string source = std::string(detail::require_template("common_cpu.h")) + kConvertSource;
  const device::CpuModule m =
      device::CpuModule::load(device::compile_cpu(source, "jitattn_test_convert").object, "jitattn_test_convert");
  std::vector<uint32_t> in;
  for (uint64_t x = 0; x < (uint64_t{1} << 32); x += 509) in.push_back(static_cast<uint32_t>(x));
  for (uint32_t hi = 0; hi < (1u << 16); ++hi) {  // bf16 ties: the low 16 bits at 0x8000
    for (uint32_t lo : {0x0000u, 0x0001u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu}) in.push_back(hi << 16 | lo);
  }
  for (uint32_t hi = 0; hi < (1u << 19); ++hi) {  // f16 normal ties: the low 13 bits at 0x1000
    for (uint32_t lo : {0x0fffu, 0x1000u, 0x1001u}) in.push_back(hi << 13 | lo);
  }
  for (uint32_t k = 0; k <= 4096; ++k) {  // f16 subnormal ties: odd multiples of 2^-25
    const float f = static_cast<float>(k) * 0x1p-25f;
    for (float g : {f, std::nextafter(f, 0.0f), std::nextafter(f, 1.0f)}) {
      in.push_back(std::bit_cast<uint32_t>(g));
      in.push_back(std::bit_cast<uint32_t>(-g));
    }
  }
  std::vector<uint16_t> to_bf16(in.size()), to_f16(in.size());
  std::vector<uint32_t> from_bf16(65536), from_f16(65536);
  const ConvertParams p{in.data(), to_bf16.data(), to_f16.data(), from_bf16.data(), from_f16.data()};
  m.kernel()(&p, 0, static_cast<long long>(in.size()));
  int reported = 0;
  for (size_t i = 0; i < in.size() && reported < 10; ++i) {
    const float f = std::bit_cast<float>(in[i]);
    if (to_bf16[i] != float_to_bf16_bits(f)) {
      ADD_FAILURE() << fmt::format("float_to_bf16(0x{:08x}) = 0x{:04x}, host 0x{:04x}", in[i], to_bf16[i], float_to_bf16_bits(f));
      ++reported;
    }
    if (to_f16[i] != float_to_f16_bits(f)) {
      ADD_FAILURE() << fmt::format("float_to_f16(0x{:08x}) = 0x{:04x}, host 0x{:04x}", in[i], to_f16[i], float_to_f16_bits(f));
      ++reported;
    }
  }
  for (uint32_t h = 0; h < 65536u && reported < 20; ++h) {
    const auto bits = static_cast<uint16_t>(h);
    if (from_bf16[h] != std::bit_cast<uint32_t>(bf16_bits_to_float(bits))) {
      ADD_FAILURE() << fmt::format("bf16_to_float(0x{:04x}) = 0x{:08x}", h, from_bf16[h]);
      ++reported;
    }
    if (from_f16[h] != std::bit_cast<uint32_t>(f16_bits_to_float(bits))) {
      ADD_FAILURE() << fmt::format("f16_to_float(0x{:04x}) = 0x{:08x}, host 0x{:08x}", h, from_f16[h],
                                   std::bit_cast<uint32_t>(f16_bits_to_float(bits)));
      ++reported;
    }
  }
}

}  // namespace
}  // namespace jitattn
