// Tuner core without a GPU: the search space and its pruning reasons, parallel compilation
// through NVRTC (ptxas spills prune), shape buckets, and the strategies driven by a
// deterministic test double of the Measurer (the real measurement path is tested on the GPU).
#include "tuner/tuner.h"

#include <cmath>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "generator/generator.h"
#include "runtime/device/nvrtc.h"

namespace jitattn::tuner {
namespace {

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

KernelSpec spec_for(int sm, int head_dim, bool causal_lse = false) {
  KernelSpec s;
  s.target.sm = sm;
  s.head_dim = s.head_dim_v = head_dim;
  s.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  if (causal_lse) {
    s.mask = MaskKind::causal;
    s.lse = true;
  }
  return s;
}

TEST(SearchSpace, BackwardSpaceHoldsItsDefaultUnpruned) {
  for (int sm : {80, 90}) {
    const DeviceLimits limits = limits_for_arch(sm);
    for (int d = 8; d <= kMaxHeadDim; d += 8) {
      for (int mode : {0, 1, 2}) {  // plain; causal, dropout and ALiBi; a bias tensor with dBias
        const bool heavy = mode == 1;
        KernelSpec spec = spec_for(sm, d, heavy);
        spec.pass = Pass::backward;
        spec.lse = false;
        spec.dropout = spec.alibi = heavy;
        spec.bias = spec.dbias = mode == 2;
        const TileConfig def = default_config(spec, limits);
        const std::vector<Candidate> cands = search_space(spec, limits);
        // mma.sync: block_m x warps x stages x split (8 column slices appended above head dim
        // 256); sm_90 adds the Hopper family's block_m x (1 consumer, 2 shared, 2 independent) x
        // stages, and the column split's (_x2) stages.
        EXPECT_EQ(cands.size(), 4u * 3u * 2u * (d > 256 ? 4u : 3u) + (sm == 90 ? 2u * 3u * 3u + 3u : 0u));
        bool found = false;
        for (const Candidate& c : cands) {
          if (c.config.hopper()) {
            EXPECT_EQ(c.config.block_n, c.config.split == 2 ? 64 : 64 * c.config.consumer_warpgroups())
                << c.config.canonical();
          } else {
            EXPECT_EQ(c.config.block_n, 16 * c.config.warps) << c.config.canonical();
          }
          if (c.config != def) continue;
          found = true;
          EXPECT_FALSE(c.pruned.has_value())
              << spec.canonical() << " " << def.canonical() << ": " << c.pruned.value_or("");
        }
        EXPECT_TRUE(found) << spec.canonical() << " default " << def.canonical();
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------

TEST(SearchSpace, SizeAndDeterministicOrder) {
  const KernelSpec spec = spec_for(80, 128);
  const DeviceLimits limits = limits_for_arch(80);
  const auto a = search_space(spec, limits);
  const auto b = search_space(spec, limits);
  ASSERT_EQ(a.size(), 3u * 4u * 3u * 4u * 2u);
  ASSERT_EQ(a.size(), b.size());
  std::set<std::string> names;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].config, b[i].config) << i;
    EXPECT_EQ(a[i].pruned, b[i].pruned) << i;
    names.insert(a[i].config.canonical());
  }
  EXPECT_EQ(names.size(), a.size()) << "every grid point appears once";
  // The order is the nested loop order: block_m outermost, q_in_regs innermost.
  EXPECT_EQ(a.front().config, (TileConfig{32, 16, 2, 1, false}));
  EXPECT_EQ(a[1].config, (TileConfig{32, 16, 2, 1, true}));
  EXPECT_EQ(a.back().config, (TileConfig{128, 128, 8, 4, true}));
}

TEST(SearchSpace, PrunedCarryReasonsAndIllegalOnesCarryWhyIllegal) {
  for (int sm : {80, 90}) {
    for (int d : {64, 128, 256, 512}) {
      const KernelSpec spec = spec_for(sm, d);
      const DeviceLimits limits = limits_for_arch(sm);
      int unpruned = 0, static_model = 0;
      for (const Candidate& c : search_space(spec, limits)) {
        const auto why = why_illegal(spec, c.config, limits);
        if (why) {
          ASSERT_TRUE(c.pruned.has_value()) << c.config.canonical();
          EXPECT_EQ(*c.pruned, *why) << c.config.canonical();
        }
        if (c.pruned) {
          EXPECT_FALSE(c.pruned->empty()) << c.config.canonical();
          if (!why) {
            EXPECT_TRUE(contains(*c.pruned, "static model: ~")) << *c.pruned;
            EXPECT_TRUE(contains(*c.pruned, "of 255 (would spill)")) << *c.pruned;
            ++static_model;
          }
        } else {
          ++unpruned;
        }
        EXPECT_EQ(c.registers, -1);
        EXPECT_TRUE(c.cubin.empty());
      }
      EXPECT_GT(unpruned, 0) << "sm" << sm << " d" << d;
      if (d == 256) EXPECT_GT(static_model, 0) << "32 rows per warp at d256 cannot fit";
    }
  }
}

TEST(SearchSpace, StaticModelNeverPrunesTheDefaultConfig) {
  for (int sm : {80, 90}) {
    const DeviceLimits limits = limits_for_arch(sm);
    for (bool causal_lse : {false, true}) {
      for (int d = 8; d <= kMaxHeadDim; d += 8) {
        const KernelSpec spec = spec_for(sm, d, causal_lse);
        const TileConfig def = default_config(spec, limits);
        bool found = false;
        for (const Candidate& c : search_space(spec, limits)) {
          if (c.config != def) continue;
          found = true;
          EXPECT_FALSE(c.pruned.has_value())
              << spec.canonical() << " " << def.canonical() << ": " << c.pruned.value_or("");
        }
        EXPECT_TRUE(found) << spec.canonical() << " default " << def.canonical()
                           << " is outside the grid";
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------

TEST(CompilePool, FillsRegistersAndCubinsInParallel) {
  const KernelSpec spec = spec_for(80, 64);
  const DeviceLimits limits = limits_for_arch(80);
  std::vector<Candidate> cands;
  for (Candidate& c : search_space(spec, limits)) {
    if (!c.pruned && cands.size() < 6 && c.config.block_m >= 64) cands.push_back(std::move(c));
  }
  ASSERT_EQ(cands.size(), 6u);
  Candidate pruned;  // must be left alone: not compiled, reason kept
  pruned.config = {128, 16, 4, 1, false};
  pruned.pruned = "kept by the caller";
  cands.push_back(pruned);

  compile_all(spec, limits, cands, 3);
  for (size_t i = 0; i + 1 < cands.size(); ++i) {
    const Candidate& c = cands[i];
    SCOPED_TRACE(c.config.canonical());
    EXPECT_FALSE(c.pruned.has_value()) << c.pruned.value_or("");
    EXPECT_GT(c.registers, 0);
    EXPECT_LE(c.registers, 255);
    EXPECT_EQ(c.spill_bytes, 0);
    EXPECT_GT(c.compile_ms, 0.0);
    EXPECT_FALSE(c.cubin.empty());
    EXPECT_EQ(c.kernel_name, generate(spec, c.config, limits).name);
  }
  EXPECT_EQ(cands.back().pruned, "kept by the caller");
  EXPECT_EQ(cands.back().registers, -1);
  EXPECT_TRUE(cands.back().cubin.empty());
}

TEST(CompilePool, PrunesASpillingCandidateWithThePtxasReport) {
  // d256 on sm_90 with 16 rows per warp and block_n 128: the static model lets it through (192
  // accumulator registers), ptxas spills it. Checked directly first, so the test stays honest if
  // the generator changes.
  const KernelSpec spec = spec_for(90, 256);
  const DeviceLimits limits = limits_for_arch(90);
  const TileConfig spilling{128, 128, 8, 1, false};
  ASSERT_FALSE(why_illegal(spec, spilling, limits).has_value());
  const KernelSource src = generate(spec, spilling, limits);
  const device::CompileResult direct = device::compile_to_cubin(src.source, src.name, 90);
  const int direct_spill =
      direct.spill_store_bytes + direct.spill_load_bytes + direct.stack_frame_bytes;
  ASSERT_GT(direct_spill, 0) << "pick another spilling config: this one no longer spills";

  std::vector<Candidate> cands;
  for (Candidate& c : search_space(spec, limits)) {
    if (c.config == spilling) cands.push_back(std::move(c));
  }
  ASSERT_EQ(cands.size(), 1u);
  ASSERT_FALSE(cands[0].pruned.has_value()) << "the static model should leave this to ptxas";
  compile_all(spec, limits, cands);
  ASSERT_TRUE(cands[0].pruned.has_value());
  EXPECT_EQ(*cands[0].pruned, "ptxas: " + std::to_string(direct_spill) + " bytes spilled, " +
                                  std::to_string(direct.registers) + " registers");
  EXPECT_EQ(cands[0].spill_bytes, direct_spill);
  EXPECT_EQ(cands[0].registers, direct.registers);
  EXPECT_TRUE(cands[0].cubin.empty()) << "a spilling kernel is never kept";
}

TEST(CompilePool, AFailureIsAReasonNotAnException) {
  const KernelSpec spec = spec_for(80, 64);
  const DeviceLimits limits = limits_for_arch(80);
  std::vector<Candidate> cands(2);
  cands[0].config = {128, 64, 3, 2, false};  // illegal, handed in unpruned: generate() throws
  cands[1].config = {64, 64, 4, 2, false};
  ASSERT_NO_THROW(compile_all(spec, limits, cands, 2));
  ASSERT_TRUE(cands[0].pruned.has_value());
  EXPECT_TRUE(contains(*cands[0].pruned, "compile failed: ")) << *cands[0].pruned;
  EXPECT_FALSE(contains(*cands[0].pruned, "\n")) << "first line only";
  EXPECT_FALSE(cands[1].pruned.has_value()) << cands[1].pruned.value_or("");
  EXPECT_FALSE(cands[1].cubin.empty());
}

// ---------------------------------------------------------------------------------------------

Problem problem(int batch, int heads, int sq, int sk) {
  Problem p;
  p.batch = batch;
  p.heads_q = p.heads_kv = heads;
  p.seqlen_q = p.total_q = sq;
  p.seqlen_k = p.total_k = sk;
  p.head_dim = p.head_dim_v = 128;
  return p;
}

TEST(ShapeBucket, PowerOfTwoCeilings) {
  EXPECT_EQ(shape_bucket(problem(2, 16, 1000, 4096)), "sq=1024,sk=4096,bh=32");
  EXPECT_EQ(shape_bucket(problem(3, 5, 4097, 4095)), "sq=8192,sk=4096,bh=16");
  EXPECT_EQ(shape_bucket(problem(1, 1, 1, 1)), "sq=1,sk=1,bh=1");
  EXPECT_EQ(shape_bucket(problem(4, 8, 0, 0)), "sq=0,sk=0,bh=32");
  EXPECT_EQ(shape_bucket(problem(0, 8, 128, 128)), "sq=128,sk=128,bh=0");
  // Nearby shapes share a bucket; across a power of two they do not.
  EXPECT_EQ(shape_bucket(problem(2, 16, 3000, 3000)), shape_bucket(problem(2, 16, 4096, 2049)));
  EXPECT_NE(shape_bucket(problem(2, 16, 2048, 2048)), shape_bucket(problem(2, 16, 2049, 2048)));
  // batch * heads beyond int range does not overflow.
  EXPECT_EQ(shape_bucket(problem(65536, 65536, 1, 1)), "sq=1,sk=1,bh=4294967296");
}

// ---------------------------------------------------------------------------------------------

// A deterministic Measurer: time is a function of the config with a unique minimum at
// bm64_bn64_w4_s2; some configs are rigged to fail. Records every call.
class FakeMeasurer : public Measurer {
 public:
  static constexpr TileConfig kTrueBest{64, 64, 4, 2, false};

  std::set<std::string> always_fail;  ///< fails every time (a launch or verification failure)
  std::set<std::string> fast_but_wrong;  ///< would be fastest, but its output is wrong
  std::set<std::string> fails_later;  ///< passes its first measurement, fails the next ones
  std::vector<std::pair<std::string, double>> calls;  ///< config, budget_ms

  static double time_of(const TileConfig& c) {
    const double lm = std::log2(c.block_m), ln = std::log2(c.block_n);
    return 1.0 + 0.10 * std::abs(lm - 6) + 0.07 * std::abs(ln - 6) +
           0.05 * std::abs(std::log2(c.warps) - 2) + 0.03 * (c.stages - 2) * (c.stages - 2) +
           (c.q_in_regs ? 0.01 : 0.0);
  }

  Measurement measure(const Candidate& cand, double budget_ms) override {
    const std::string name = cand.config.canonical();
    const int seen = seen_[name]++;
    calls.emplace_back(name, budget_ms);
    EXPECT_FALSE(cand.pruned.has_value()) << "pruned candidate measured: " << name;
    Measurement m;
    m.samples = 10;
    if (always_fail.count(name) || (fails_later.count(name) && seen > 0)) {
      m.error = "launch failed";
      return m;
    }
    if (fast_but_wrong.count(name)) {
      m.median_ms = m.p20_ms = m.p80_ms = 0.01;
      m.error = "verification: max relative error 0.5";
      return m;
    }
    m.ok = true;
    m.median_ms = time_of(cand.config) * (fails_later.count(name) ? 0.5 : 1.0);
    m.p20_ms = m.median_ms * 0.99;
    m.p80_ms = m.median_ms * 1.01;
    return m;
  }

 private:
  std::map<std::string, int> seen_;
};

Candidate candidate(TileConfig c) {
  Candidate out;
  out.config = c;
  return out;
}

// 60 unpruned candidates (block_m x block_n x stages 1..5) with the true best among them, plus
// pruned ones that must never be measured.
std::vector<Candidate> large_space() {
  std::vector<Candidate> out;
  for (int bm : {32, 64, 128}) {
    for (int bn : {16, 32, 64, 128}) {
      for (int st = 1; st <= 5; ++st) out.push_back(candidate({bm, bn, 4, st, false}));
    }
  }
  Candidate pruned = candidate({64, 64, 4, 2, true});
  pruned.pruned = "static model";
  out.insert(out.begin() + 7, pruned);
  return out;
}

// 12 unpruned: block_m x block_n at 4 warps, 2 stages.
std::vector<Candidate> small_space() {
  std::vector<Candidate> out;
  for (int bm : {32, 64, 128}) {
    for (int bn : {16, 32, 64, 128}) out.push_back(candidate({bm, bn, 4, 2, false}));
  }
  Candidate pruned = candidate({16, 16, 4, 2, false});
  pruned.pruned = "illegal";
  out.push_back(pruned);
  return out;
}

struct Recorded {
  int on_measured = 0;
  std::vector<Progress> progress;
};

TuneOptions recording_options(Recorded& rec, double budget_seconds) {
  TuneOptions o;
  o.budget_seconds = budget_seconds;
  o.on_measured = [&rec](const Candidate&, const Measurement&) { ++rec.on_measured; };
  o.progress = [&rec](const Progress& p) { rec.progress.push_back(p); };
  return o;
}

TEST(Strategy, ExhaustivePicksTheTrueBestWithEqualBudgetShares) {
  FakeMeasurer m;
  m.always_fail = {"bm128_bn128_w4_s2"};
  m.fast_but_wrong = {"bm32_bn16_w4_s2"};
  Recorded rec;
  const TuneOutcome out = tune(small_space(), m, recording_options(rec, 1.0));
  EXPECT_EQ(out.strategy, "exhaustive");
  ASSERT_TRUE(out.best.has_value());
  EXPECT_EQ(*out.best, FakeMeasurer::kTrueBest);

  // 12 once each with 70% of 1 s, then the top 3 three times each with the remaining 30%.
  ASSERT_EQ(m.calls.size(), 12u + 9u);
  for (size_t i = 0; i < 12; ++i) EXPECT_DOUBLE_EQ(m.calls[i].second, 700.0 / 12) << i;
  for (size_t i = 12; i < 21; ++i) EXPECT_DOUBLE_EQ(m.calls[i].second, 300.0 / 9) << i;
  std::set<std::string> first12;
  for (size_t i = 0; i < 12; ++i) first12.insert(m.calls[i].first);
  EXPECT_EQ(first12.size(), 12u) << "each measured once before the re-measure";
  // Interleaved: A B C A B C A B C, fastest first.
  for (size_t i = 15; i < 21; ++i) EXPECT_EQ(m.calls[i].first, m.calls[i - 3].first) << i;
  EXPECT_EQ(m.calls[12].first, FakeMeasurer::kTrueBest.canonical());
  EXPECT_NE(m.calls[12].first, m.calls[13].first);

  EXPECT_EQ(out.measured.size(), m.calls.size());
  EXPECT_EQ(rec.on_measured, static_cast<int>(m.calls.size()));
  for (const auto& [cfg, meas] : out.measured) {
    if (cfg.canonical() == "bm32_bn16_w4_s2" || cfg.canonical() == "bm128_bn128_w4_s2") {
      EXPECT_FALSE(meas.ok);
      EXPECT_FALSE(meas.error.empty());
    }
  }
  ASSERT_FALSE(rec.progress.empty());
  const Progress& last = rec.progress.back();
  EXPECT_EQ(last.measured, 21);
  EXPECT_EQ(last.total, 21);
  EXPECT_EQ(last.compiled, 12);
  EXPECT_EQ(last.verified, 10);
  EXPECT_EQ(last.best_config, FakeMeasurer::kTrueBest.canonical());
  EXPECT_GE(rec.progress.size(), m.calls.size());
}

TEST(Strategy, ExhaustiveBudgetHasAFloor) {
  FakeMeasurer m;
  TuneOptions o;
  o.budget_seconds = 0.1;  // 70 ms over 12 would be under 6 ms each
  tune(small_space(), m, o);
  ASSERT_FALSE(m.calls.empty());
  for (const auto& [name, budget] : m.calls) EXPECT_DOUBLE_EQ(budget, 20.0) << name;
}

TEST(Strategy, SuccessiveHalvingFindsTheBestWithBoundedMeasurements) {
  FakeMeasurer m;
  m.always_fail = {"bm128_bn16_w4_s3"};
  m.fast_but_wrong = {"bm32_bn128_w4_s5"};
  Recorded rec;
  const std::vector<Candidate> cands = large_space();
  const TuneOutcome out = tune(cands, m, recording_options(rec, 30.0));
  EXPECT_EQ(out.strategy, "successive-halving");
  ASSERT_TRUE(out.best.has_value());
  EXPECT_EQ(*out.best, FakeMeasurer::kTrueBest);

  // Rounds of 60, 30, 15, 8, 4 survivors (each an equal fifth of 21 s), then 3 finalists x 3.
  const std::vector<size_t> rounds = {60, 30, 15, 8, 4};
  size_t i = 0;
  for (size_t r : rounds) {
    std::set<std::string> in_round;
    for (size_t k = 0; k < r; ++k, ++i) {
      ASSERT_LT(i, m.calls.size());
      EXPECT_DOUBLE_EQ(m.calls[i].second, 21000.0 / 5 / double(r)) << "round of " << r;
      in_round.insert(m.calls[i].first);
    }
    EXPECT_EQ(in_round.size(), r) << "each survivor once per round";
  }
  ASSERT_EQ(m.calls.size(), i + 9);
  for (; i < m.calls.size(); ++i) EXPECT_DOUBLE_EQ(m.calls[i].second, 9000.0 / 9);
  EXPECT_LE(m.calls.size(), 2 * 60u + 9u) << "bounded: about twice the space";
  EXPECT_EQ(out.measured.size(), m.calls.size());
  EXPECT_EQ(rec.on_measured, static_cast<int>(m.calls.size()));
  EXPECT_EQ(rec.progress.back().measured, static_cast<int>(m.calls.size()));
  // The rigged ones are measured in the first round only.
  int wrong = 0;
  for (const auto& call : m.calls) wrong += call.first == "bm32_bn128_w4_s5";
  EXPECT_EQ(wrong, 1) << "a failed candidate is dropped at once";
  int broken = 0;
  for (const auto& call : m.calls) broken += call.first == "bm128_bn16_w4_s3";
  EXPECT_EQ(broken, 1);
}

TEST(Strategy, FailedConfigsAreNeverChosen) {
  // Passes its first measurement at half the best time, fails the re-measure: recorded, never
  // chosen. The truly fastest ok config wins instead.
  FakeMeasurer m;
  m.fails_later = {"bm128_bn32_w4_s2"};
  const TuneOutcome out = tune(small_space(), m, TuneOptions{});
  ASSERT_TRUE(out.best.has_value());
  EXPECT_EQ(*out.best, FakeMeasurer::kTrueBest);
  int failed_records = 0;
  for (const auto& [cfg, meas] : out.measured) failed_records += !meas.ok;
  EXPECT_EQ(failed_records, 1) << "a finalist that fails is not measured again";

  // Nothing ok: no best, every failure recorded.
  FakeMeasurer all_bad;
  for (const Candidate& c : small_space()) all_bad.always_fail.insert(c.config.canonical());
  const TuneOutcome none = tune(small_space(), all_bad, TuneOptions{});
  EXPECT_FALSE(none.best.has_value());
  EXPECT_EQ(none.measured.size(), 12u);

  // Nothing unpruned: no measurement at all.
  std::vector<Candidate> pruned = small_space();
  for (Candidate& c : pruned) c.pruned = "test";
  FakeMeasurer unused;
  EXPECT_FALSE(tune(pruned, unused, TuneOptions{}).best.has_value());
  EXPECT_TRUE(unused.calls.empty());
}

TEST(Strategy, StderrProgressPrintsAtMostOneLinePerMeasurement) {
  testing::internal::CaptureStderr();  // a file, not a terminal: plain lines
  const ProgressSink sink = stderr_progress();
  Progress p;
  p.total = 3;
  p.compiled = 3;
  for (int measured : {0, 1, 1, 1, 2, 3, 3}) {
    p.measured = measured;
    if (measured > 0) {
      p.best_config = "bm128_bn64_w4_s2";
      p.best_ms = 1.82;
    }
    sink(p);
  }
  const std::string text = testing::internal::GetCapturedStderr();
  int lines = 0;
  for (char ch : text) lines += ch == '\n';
  EXPECT_EQ(lines, 4) << text;
  EXPECT_TRUE(contains(text, "3/3 measured, best bm128_bn64_w4_s2 1.82 ms")) << text;
  EXPECT_FALSE(contains(text, "\r")) << text;
}

}  // namespace
}  // namespace jitattn::tuner
