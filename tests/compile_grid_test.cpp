// Every generated variant compiles through NVRTC for sm_80 and sm_90 with zero spill bytes for its
// default config: every head dim 8..256 step 8 (and unequal QK/V dims) x {fp16, bf16} x each mask
// and modifier, and a sample of head dims 264..512 (the column-sliced kernels). Runs without a GPU
// (CI). Compiles in parallel threads: NVRTC is thread-safe.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "generator/generator.h"
#include "runtime/device/nvrtc.h"

namespace jitattn {
namespace {

struct Variant {
  std::string label;
  KernelSpec spec;
  std::optional<TileConfig> config = std::nullopt;  // else the default config
  ShapeHint shape = {};                              // the default's view of the problem
};

// The modifier/mask sets crossed with every head dim. Each feature appears on its own and the
// heaviest combination (everything at once) is compiled too, since register pressure adds up.
std::vector<Variant> variants() {
  struct Mods {
    const char* label;
    MaskKind mask;
    bool window, bias, alibi, softcap, lse;
    VarlenKind varlen;
    bool bias_tiled = false;
    bool dropout = false;
  };
  const Mods mods[] = {
      {"plain", MaskKind::none, false, false, false, false, false, VarlenKind::none},
      {"causal", MaskKind::causal, false, false, false, false, false, VarlenKind::none},
      {"causal_lse", MaskKind::causal, false, false, false, false, true, VarlenKind::none},
      {"causal_br_window", MaskKind::causal_bottom_right, true, false, false, false, false, VarlenKind::none},
      {"bias_lse", MaskKind::none, false, true, false, false, true, VarlenKind::none},
      {"alibi", MaskKind::none, false, false, true, false, false, VarlenKind::padded},
      {"softcap_packed", MaskKind::none, false, false, false, true, false, VarlenKind::packed},
      {"everything", MaskKind::causal, true, true, true, true, true, VarlenKind::packed},
      {"bias_tiled_lse", MaskKind::none, false, true, false, false, true, VarlenKind::none, true},
      {"everything_tiled", MaskKind::causal, true, true, true, true, true, VarlenKind::packed, true},
      {"bias_tiled_causal_packed_lse", MaskKind::causal, false, true, false, false, true, VarlenKind::packed, true},
      {"bias_tiled_window_lse", MaskKind::none, true, true, false, false, true, VarlenKind::none, true},
      {"causal_lse_dropout", MaskKind::causal, false, false, false, false, true, VarlenKind::none, false, true},
      {"dropout", MaskKind::none, false, false, false, false, false, VarlenKind::none, false, true},
      {"dropout_window_alibi_padded", MaskKind::causal_bottom_right, true, false, true, false, true, VarlenKind::padded, false, true},
      {"everything_tiled_dropout", MaskKind::causal, true, true, true, true, true, VarlenKind::packed, true, true},
  };
  std::vector<Variant> out;
  for (int sm : {80, 90}) {
    for (DType dt : {DType::bf16, DType::f16}) {
      for (int d = 8; d <= 256; d += 8) {  // above 256: wide_variants()
        for (const Mods& m : mods) {
          // fp16 shares every code path with bf16 except the conversion instructions: cross it
          // with the plain and heaviest sets only, to keep CI within its time.
          if (dt == DType::f16 && std::string_view(m.label) != "plain" &&
              std::string_view(m.label) != "everything") {
            continue;
          }
          KernelSpec s;
          s.target.sm = sm;
          s.dtype = dt;
          s.head_dim = s.head_dim_v = d;
          s.mask = m.mask;
          s.window = m.window;
          s.bias = m.bias;
          s.bias_tiled = m.bias_tiled;
          s.alibi = m.alibi;
          s.softcap = m.softcap ? 30.0f : 0.0f;
          s.lse = m.lse;
          s.dropout = m.dropout;
          s.varlen = m.varlen;
          s.scale = 1.0f / std::sqrt(float(d));
          out.push_back({fmt::format("sm{}_{}_d{}_{}", sm, dtype_name(dt), d, m.label), s});
          // Where the default depends on the key count (persistent tiles for short rows, wider
          // key blocks for long ones), those defaults too.
          for (const ShapeHint keys : {ShapeHint{1024}, ShapeHint{4096}}) {
            if (!(default_config(s, limits_for_arch(sm), keys) == default_config(s, limits_for_arch(sm)))) {
              out.push_back({fmt::format("sm{}_{}_d{}_{}_sk{}", sm, dtype_name(dt), d, m.label, keys.seqlen_k), s,
                             std::nullopt, keys});
            }
          }
        }
      }
    }
    for (auto [d, dv] : {std::pair{72, 40}, {128, 64}, {64, 128}, {40, 200}, {256, 8}, {8, 256}, {192, 128}}) {
      KernelSpec s;
      s.target.sm = sm;
      s.head_dim = d;
      s.head_dim_v = dv;
      s.mask = MaskKind::causal;
      s.lse = true;
      s.scale = 0.125f;
      out.push_back({fmt::format("sm{}_bf16_d{}_dv{}", sm, d, dv), s});
    }
  }
  return out;
}

// Backward modules: plain attention at every head dim, the heaviest sets in both modes and each
// feature on its own at chosen head dims, unequal QK/V dims. Every kernel of a module is checked.
std::vector<Variant> backward_variants() {
  struct Mods {
    const char* label;
    MaskKind mask;
    bool window, bias, alibi, softcap, dropout, deterministic, dbias;
    VarlenKind varlen;
  };
  const Mods heavy[] = {
      {"plain", MaskKind::none, false, false, false, false, false, false, false, VarlenKind::none},
      {"everything", MaskKind::causal, true, true, true, true, true, false, true, VarlenKind::packed},
      {"everything_det", MaskKind::causal, true, true, true, true, true, true, true, VarlenKind::padded},
  };
  const Mods single[] = {
      {"causal_det", MaskKind::causal, false, false, false, false, false, true, false, VarlenKind::none},
      {"causal_br_window", MaskKind::causal_bottom_right, true, false, false, false, false, false, false, VarlenKind::none},
      {"bias_dbias", MaskKind::none, false, true, false, false, false, false, true, VarlenKind::none},
      {"alibi_padded", MaskKind::none, false, false, true, false, false, false, false, VarlenKind::padded},
      {"softcap_packed", MaskKind::none, false, false, false, true, false, false, false, VarlenKind::packed},
      {"dropout", MaskKind::none, false, false, false, false, true, false, false, VarlenKind::none},
  };
  auto make = [](int sm, DType dt, int d, int dv, const Mods& m) {
    KernelSpec s;
    s.pass = Pass::backward;
    s.target.sm = sm;
    s.dtype = dt;
    s.head_dim = d;
    s.head_dim_v = dv;
    s.mask = m.mask;
    s.window = m.window;
    s.bias = m.bias;
    s.alibi = m.alibi;
    s.softcap = m.softcap ? 30.0f : 0.0f;
    s.dropout = m.dropout;
    s.deterministic = m.deterministic;
    s.dbias = m.dbias;
    s.varlen = m.varlen;
    s.scale = 1.0f / std::sqrt(float(d));
    return Variant{fmt::format("bwd_sm{}_{}_d{}_dv{}_{}", sm, dtype_name(dt), d, dv, m.label), s};
  };
  std::vector<Variant> out;
  // The heavy sets at the head dims where the default config changes (and their neighbours);
  // every head dim for plain attention. About 170 modules: ~2 minutes on 2 cores.
  for (int sm : {80, 90}) {
    for (int d = 8; d <= 256; d += 8) out.push_back(make(sm, DType::bf16, d, d, heavy[0]));
    for (int d : {8, 40, 48, 56, 64, 72, 96, 128, 136, 200, 256}) {
      out.push_back(make(sm, DType::bf16, d, d, heavy[1]));
      out.push_back(make(sm, DType::bf16, d, d, heavy[2]));
    }
    for (int d : {64, 128, 256}) {
      for (const Mods& m : single) out.push_back(make(sm, DType::bf16, d, d, m));
    }
    for (int d : {64, 128}) out.push_back(make(sm, DType::f16, d, d, heavy[1]));
    for (auto [d, dv] : {std::pair{72, 40}, {128, 64}, {64, 128}, {40, 200}, {256, 8}, {8, 256}}) {
      out.push_back(make(sm, DType::bf16, d, dv, heavy[0]));
      out.push_back(make(sm, DType::bf16, d, dv, heavy[2]));
    }
  }
  return out;
}

// Head dims above 256 (kMaxHeadDim 512), a sample to keep CI's time: forward plain at 264..512,
// the heaviest sets at 512 (register pressure peaks at the widest slices), unequal dims on both
// sides of 256, and backward modules (8 column slices) plain and heaviest.
std::vector<Variant> wide_variants() {
  auto spec = [](int sm, int d, int dv) {
    KernelSpec s;
    s.target.sm = sm;
    s.head_dim = d;
    s.head_dim_v = dv;
    s.scale = 1.0f / std::sqrt(float(d));
    return s;
  };
  auto heaviest = [](KernelSpec s, bool tiled_dropout) {
    s.mask = MaskKind::causal;
    s.window = s.bias = s.alibi = s.lse = true;
    s.softcap = 30.0f;
    s.varlen = VarlenKind::packed;
    s.bias_tiled = s.dropout = tiled_dropout;
    return s;
  };
  std::vector<Variant> out;
  for (int sm : {80, 90}) {
    for (int d : {264, 320, 384, 448, 512}) out.push_back({fmt::format("sm{}_bf16_d{}_plain", sm, d), spec(sm, d, d)});
    for (int d : {384, 512}) {
      out.push_back({fmt::format("sm{}_bf16_d{}_everything", sm, d), heaviest(spec(sm, d, d), false)});
    }
    out.push_back({fmt::format("sm{}_bf16_d512_everything_tiled_dropout", sm), heaviest(spec(sm, 512, 512), true)});
    KernelSpec f16 = heaviest(spec(sm, 512, 512), false);
    f16.dtype = DType::f16;
    out.push_back({fmt::format("sm{}_f16_d512_everything", sm), f16});
    KernelSpec nobias = heaviest(spec(sm, 512, 512), false);
    nobias.bias = false;  // stays on the Hopper family on sm_90
    out.push_back({fmt::format("sm{}_bf16_d512_everything_but_bias", sm), nobias});
    for (auto [d, dv] : {std::pair{512, 128}, {128, 512}, {264, 512}, {512, 264}}) {
      KernelSpec s = spec(sm, d, dv);
      s.mask = MaskKind::causal;
      s.lse = true;
      out.push_back({fmt::format("sm{}_bf16_d{}_dv{}_causal_lse", sm, d, dv), s});
    }
    for (auto [d, dv] : {std::pair{512, 512}, {264, 264}, {512, 64}}) {
      KernelSpec s = spec(sm, d, dv);
      s.pass = Pass::backward;
      out.push_back({fmt::format("bwd_sm{}_bf16_d{}_dv{}_plain", sm, d, dv), s});
    }
    for (int d : {264, 320, 384, 448, 512}) {
      KernelSpec s = spec(sm, d, d);
      s.pass = Pass::backward;
      s.mask = MaskKind::causal;
      out.push_back({fmt::format("bwd_sm{}_bf16_d{}_causal", sm, d), s});
    }
    KernelSpec b = heaviest(spec(sm, 512, 512), false);
    b.pass = Pass::backward;
    b.lse = false;
    b.dropout = b.deterministic = b.dbias = true;
    b.varlen = VarlenKind::padded;
    out.push_back({fmt::format("bwd_sm{}_bf16_d512_everything_det", sm), b});
  }
  return out;
}

// The Hopper-family backward (templates/attn_bwd_sm90.cuh) at every head dim it takes (8..128),
// plain and with every feature it supports (masks, window, varlen, ALiBi, softcap, a bias tensor
// with and without dBias, deterministic mode, dropout, fp16, unequal dims). default_config picks it for all of these but the
// bias tensor without dBias (family_default_config is compiled, and the test checks the default's
// family). Broadcast bias dims and GQA are runtime strides and heads: the same kernel.
std::vector<Variant> sm90_backward_variants() {
  struct Mods {
    const char* label;
    MaskKind mask;
    bool window, bias, alibi, softcap;
    VarlenKind varlen;
    bool dbias = false;
    bool det = false;
    bool dropout = false;
  };
  const Mods mods[] = {
      {"plain", MaskKind::none, false, false, false, false, VarlenKind::none},
      {"causal", MaskKind::causal, false, false, false, false, VarlenKind::none},
      {"causal_br_window_packed", MaskKind::causal_bottom_right, true, false, false, false, VarlenKind::packed},
      {"alibi_softcap_padded", MaskKind::causal, false, false, true, true, VarlenKind::padded},
      {"everything", MaskKind::causal, true, true, true, true, VarlenKind::packed},
      {"alibi_causal", MaskKind::causal, false, false, true, false, VarlenKind::none},
      {"softcap", MaskKind::none, false, false, false, true, VarlenKind::none},
      {"bias_window", MaskKind::none, true, true, false, false, VarlenKind::none},
      {"dbias", MaskKind::none, false, true, false, false, VarlenKind::none, true},
      {"dbias_causal_packed", MaskKind::causal, false, true, false, false, VarlenKind::packed, true},
      {"dbias_causal_br_window_padded", MaskKind::causal_bottom_right, true, true, false, false, VarlenKind::padded, true},
      {"dbias_softcap", MaskKind::none, false, true, false, true, VarlenKind::none, true},
      {"dbias_everything", MaskKind::causal, true, true, true, true, VarlenKind::packed, true},
      {"dbias_alibi_causal", MaskKind::causal, false, true, true, false, VarlenKind::none, true},
      {"det_causal", MaskKind::causal, false, false, false, false, VarlenKind::none, false, true},
      {"det_causal_br_window_packed", MaskKind::causal_bottom_right, true, false, false, false, VarlenKind::packed, false, true},
      {"det_dbias_everything", MaskKind::causal, true, true, true, true, VarlenKind::packed, true, true},
      {"dropout", MaskKind::none, false, false, false, false, VarlenKind::none, false, false, true},
      {"dropout_causal", MaskKind::causal, false, false, false, false, VarlenKind::none, false, false, true},
      {"dropout_det_causal_br_window_packed", MaskKind::causal_bottom_right, true, false, false, false, VarlenKind::packed, false, true, true},
      {"dropout_dbias_everything", MaskKind::causal, true, true, true, true, VarlenKind::packed, true, false, true},
      {"det", MaskKind::none, false, false, false, false, VarlenKind::none, false, true},
  };
  auto make = [](DType dt, int d, int dv, const Mods& m) {
    KernelSpec s;
    s.pass = Pass::backward;
    s.target.sm = 90;
    s.dtype = dt;
    s.head_dim = d;
    s.head_dim_v = dv;
    s.mask = m.mask;
    s.window = m.window;
    s.bias = m.bias;
    s.dbias = m.dbias;
    s.deterministic = m.det;
    s.dropout = m.dropout;
    s.alibi = m.alibi;
    s.softcap = m.softcap ? 30.0f : 0.0f;
    s.varlen = m.varlen;
    s.scale = 1.0f / std::sqrt(float(d));
    return Variant{fmt::format("bwd90_{}_d{}_dv{}_{}", dtype_name(dt), d, dv, m.label), s};
  };
  std::vector<Variant> out;
  for (int d = 8; d <= 128; d += 8) {
    for (const Mods& m : mods) out.push_back(make(DType::bf16, d, d, m));
  }
  for (int d : {64, 128}) out.push_back(make(DType::f16, d, d, mods[4]));
  for (int d : {64, 96, 128}) {
    for (int i : {8, 9, 12}) out.push_back(make(DType::f16, d, d, mods[i]));
  }
  for (auto [d, dv] : {std::pair{72, 40}, {128, 64}, {64, 128}, {8, 128}}) {
    out.push_back(make(DType::bf16, d, dv, mods[0]));
    out.push_back(make(DType::bf16, d, dv, mods[4]));
    out.push_back(make(DType::bf16, d, dv, mods[12]));
  }
  // dBias and the deterministic mode under the other configs the GPU tests force: block_m 128
  // (row-split dQ), one consumer, the independent consumers (_pp), where the register model
  // allows them (skipped where not).
  for (const TileConfig& c : {sm90_backward_config(128, 2, 2), sm90_backward_config(64, 1, 1), sm90_backward_config(64, 2, 2, true),
                              sm90_backward_config(128, 2, 3, true)}) {
    for (int d : {16, 32, 64, 128}) {
      for (int i : {8, 9, 14, 15}) {
        if ((d > 32) != (i >= 14)) continue;  // dBias at 16 and 32, deterministic at 64 and 128
        Variant v = make(DType::bf16, d, d, mods[i]);
        // The model refuses block_m 128 beside dBias with causal packed varlen at d32 (212).
        if (why_illegal(v.spec, c, limits_for_arch(90))) continue;
        v.label += "_" + c.canonical();
        v.config = c;
        out.push_back(std::move(v));
      }
    }
  }
  for (int d : {64, 96}) {
    for (int i : {8, 9}) {
      Variant v = make(DType::bf16, d, d, mods[i]);
      v.config = sm90_backward_config(64, 2, 2, true);
      v.label += "_" + v.config->canonical();
      out.push_back(std::move(v));
    }
  }
  // Head dims above 128: the column split (_x2) is the default; every modifier set where the
  // register model allows it (the others take the mma.sync backward: skipped above).
  for (int d : {136, 152, 160, 176, 192, 200, 216, 224, 240, 256}) {
    for (const Mods& m : mods) out.push_back(make(DType::bf16, d, d, m));
  }
  for (int d : {192, 256}) out.push_back(make(DType::f16, d, d, mods[4]));
  // Bottom-right alignment and varlen beside a mask alone (the H200's NVRTC spilled 16-20 bytes
  // at d256 with the LSE read ahead).
  const Mods masks[] = {{"causal_br", MaskKind::causal_bottom_right, false, false, false, false, VarlenKind::none},
                        {"causal_packed", MaskKind::causal, false, false, false, false, VarlenKind::packed},
                        {"causal_br_padded", MaskKind::causal_bottom_right, false, false, false, false, VarlenKind::padded},
                        {"causal_padded", MaskKind::causal, false, false, false, false, VarlenKind::padded}};
  for (int d : {192, 224, 256}) {
    for (const Mods& m : masks) out.push_back(make(DType::bf16, d, d, m));
  }
  for (auto [d, dv] : {std::pair{192, 128}, {256, 128}, {128, 256}, {256, 192}, {64, 256}}) {
    for (int i : {0, 1, 4, 12, 17}) out.push_back(make(DType::bf16, d, dv, mods[i]));
  }
  // _x2 forced below 128 (a tuning candidate there), with the heaviest sets.
  for (int d : {64, 128}) {
    for (int i : {1, 4, 16, 19}) {
      Variant v = make(DType::bf16, d, d, mods[i]);
      const TileConfig c = sm90_backward_wide_config(2);
      if (why_illegal(v.spec, c, limits_for_arch(90))) continue;
      v.label += "_" + c.canonical();
      v.config = c;
      out.push_back(std::move(v));
    }
  }
  return out;
}

// The kernels of `src` whose ptxas report the test checks.
std::vector<std::string> kernels_of(const KernelSpec& spec, const KernelSource& src) {
  if (spec.pass == Pass::forward) return {src.name};
  std::vector<std::string> names = {src.name,
                                    backward_kernel_name(src.name, BackwardKernel::preprocess),
                                    backward_kernel_name(src.name, BackwardKernel::dbias)};
  // Deterministic: the mma.sync family's own dQ kernel; the Hopper family orders its reduce-adds.
  names.push_back(backward_kernel_name(
      src.name, spec.deterministic && !src.tma_params ? BackwardKernel::dq : BackwardKernel::convert));
  return names;
}

// JITATTN_GRID_FILTER=text keeps the variants whose label contains it (for checking a template
// change on a few before the whole grid).
void compile_all_without_spills(std::vector<Variant> vs, bool sm90_family = false) {
  if (const char* f = std::getenv("JITATTN_GRID_FILTER")) {
    std::erase_if(vs, [&](const Variant& v) { return v.label.find(f) == std::string::npos; });
  }
  std::atomic<size_t> next{0};
  std::mutex mu;
  std::vector<std::string> failures;
  double total_ms = 0, max_ms = 0;
  auto worker = [&] {
    for (size_t i; (i = next.fetch_add(1)) < vs.size();) {
      const Variant& v = vs[i];
      const DeviceLimits limits = limits_for_arch(v.spec.target.sm);
      std::string failure;
      double ms = 0;
      try {
        const TileConfig cfg = v.config              ? *v.config
                               : sm90_family ? family_default_config(v.spec, limits, Family::sm90)
                                             : default_config(v.spec, limits, v.shape);
        if (sm90_family && !cfg.hopper()) throw std::runtime_error("the sm90 family's default is not a Hopper config");
        // A forced config is never skipped: generate() below reports it if the generator refuses it.
        if (sm90_family && !v.config && why_illegal(v.spec, cfg, limits)) {
          // Registers refuse it (modifiers at large head dims): the mma.sync backward is the
          // default then, and the backward grid above compiles it.
          if (default_config(v.spec, limits).hopper()) throw std::runtime_error("an illegal sm90 default");
          continue;
        }
        if (sm90_family && !v.config && default_config(v.spec, limits).hopper() != (!v.spec.bias || v.spec.dbias)) {
          throw std::runtime_error(fmt::format("default_config picks {} (the sm90 family is the default without a "
                                               "bias tensor, or with its gradient)",
                                               default_config(v.spec, limits).canonical()));
        }
        const KernelSource src = generate(v.spec, cfg, limits);
        const device::CompileResult compiled =
            device::compile_to_cubin(src.source, src.name, v.spec.target.sm, src.arch_specific);
        ms = compiled.compile_ms;
        if (compiled.cubin.empty()) failure = "empty cubin";
        for (const std::string& name : kernels_of(v.spec, src)) {
          device::CompileResult r;
          if (!device::parse_ptxas_info(compiled.log, name, r) || r.registers <= 0) {
            failure = "no ptxas report for " + name;
          } else if (r.spill_store_bytes + r.spill_load_bytes + r.stack_frame_bytes > 0) {
            failure = fmt::format("{}: {} registers, {} B stack, {} B spill stores, {} B spill loads",
                                  name, r.registers, r.stack_frame_bytes, r.spill_store_bytes,
                                  r.spill_load_bytes);
          } else if (r.wgmma_serialized) {
            failure = fmt::format("{}: wgmma {}", name, r.wgmma_note);
          }
        }
      } catch (const std::exception& e) {
        failure = e.what();
      }
      std::lock_guard lock(mu);
      total_ms += ms;
      max_ms = std::max(max_ms, ms);
      if (!failure.empty()) failures.push_back(v.label + ": " + failure);
    }
  };
  std::vector<std::thread> threads;
  const unsigned n = std::max(2u, std::thread::hardware_concurrency());
  for (unsigned t = 0; t < n; ++t) threads.emplace_back(worker);
  for (auto& t : threads) t.join();
  ::testing::Test::RecordProperty("variants", static_cast<int>(vs.size()));
  std::cout << vs.size() << " variants, compile time mean " << total_ms / double(vs.size())
            << " ms, max " << max_ms << " ms\n";
  for (const auto& f : failures) ADD_FAILURE() << f;
}

TEST(CompileGrid, EveryDefaultVariantCompilesWithoutSpills) { compile_all_without_spills(variants()); }

TEST(CompileGrid, EveryDefaultBackwardVariantCompilesWithoutSpills) {
  compile_all_without_spills(backward_variants());
}

TEST(CompileGrid, WideHeadDimVariantsCompileWithoutSpills) { compile_all_without_spills(wide_variants()); }

TEST(CompileGrid, EverySm90BackwardVariantCompilesWithoutSpills) {
  compile_all_without_spills(sm90_backward_variants(), /*sm90_family=*/true);
}

}  // namespace
}  // namespace jitattn
