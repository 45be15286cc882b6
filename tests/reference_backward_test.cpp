// reference::backward against central finite differences of reference::forward, in float64 on
// tiny problems over every forward feature. Inputs are f32 multiples of 2^-12 and the step is
// 2^-10, so x +- h is exact and the difference quotient's error is only its O(h^2) truncation.
// Also: Philox4x32-10 against the published known-answer vectors, and dropout's statistics.
#include "runtime/reference.h"

#include <array>
#include <cmath>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "jitattn/error.h"
#include "runtime/numeric.h"
#include "runtime/problem.h"
#include "templates/philox.h"
#include "tests/test_util.h"

namespace jitattn {
namespace {

struct FdCase {
  std::string name;
  int64_t b = 2, sq = 5, sk = 7, hq = 2, hkv = 2, d = 8, dv = 8;
  MaskKind mask = MaskKind::none;
  std::optional<Window> window;
  float softcap = 0.0f;
  std::optional<float> scale;
  std::optional<std::array<int64_t, 4>> bias_shape;
  bool alibi = false;
  VarlenKind varlen = VarlenKind::none;
  std::vector<int32_t> lens_q, lens_k;  // packed: lengths; padded: seqused
  float dropout_p = 0.0f;
};

// f32 values on a 2^-12 grid in [-1, 1], never 0.
test::HostTensor grid_tensor(std::array<int64_t, 4> shape, std::mt19937_64& rng) {
  test::HostTensor t = test::poisoned_tensor(DType::f32, shape);
  std::uniform_int_distribution<int> dist(-4096, 4095);
  const int64_t n = shape[0] * shape[1] * shape[2] * shape[3];
  for (int64_t i = 0; i < n; ++i) {
    int v = dist(rng);
    store_from_float(t.data(), DType::f32, i, float(v == 0 ? 1 : v) / 4096.0f);
  }
  return t;
}

std::vector<int32_t> offsets(const std::vector<int32_t>& lens) {
  std::vector<int32_t> cu(1, 0);
  for (int32_t n : lens) cu.push_back(cu.back() + n);
  return cu;
}

struct Problem {
  test::HostTensor q, k, v, o, d_o, bias;
  std::vector<float> slopes;
  std::vector<int32_t> cu_q, cu_k, used_q, used_k;
  AttentionArgs args;
};

void build(const FdCase& c, Problem& p, std::mt19937_64& rng) {
  AttentionArgs& a = p.args;
  int64_t bd = c.b, rq = c.sq, rk = c.sk;
  a.varlen = c.varlen;
  if (c.varlen == VarlenKind::packed) {
    p.cu_q = offsets(c.lens_q);
    p.cu_k = offsets(c.lens_k);
    bd = 1;
    rq = p.cu_q.back();
    rk = p.cu_k.back();
    a.batch = static_cast<int>(c.lens_q.size());
    a.max_seqlen_q = *std::max_element(c.lens_q.begin(), c.lens_q.end());
    a.max_seqlen_k = *std::max_element(c.lens_k.begin(), c.lens_k.end());
    a.cu_seqlens_q = p.cu_q.data();
    a.cu_seqlens_k = p.cu_k.data();
  } else if (c.varlen == VarlenKind::padded) {
    p.used_q = c.lens_q;
    p.used_k = c.lens_k;
    a.seqused_q = p.used_q.data();
    a.seqused_k = p.used_k.data();
  }
  p.q = grid_tensor({bd, rq, c.hq, c.d}, rng);
  p.k = grid_tensor({bd, rk, c.hkv, c.d}, rng);
  p.v = grid_tensor({bd, rk, c.hkv, c.dv}, rng);
  p.o = test::poisoned_tensor(DType::f32, {bd, rq, c.hq, c.dv});
  p.d_o = grid_tensor({bd, rq, c.hq, c.dv}, rng);
  a.q = p.q.ref;
  a.k = p.k.ref;
  a.v = p.v.ref;
  a.o = p.o.ref;
  if (c.bias_shape) {
    p.bias = grid_tensor(*c.bias_shape, rng);
    a.bias = p.bias.ref;
  }
  if (c.alibi) {
    for (int64_t h = 0; h < c.hq; ++h) p.slopes.push_back(std::exp2(-float(h + 1)));
    a.alibi_slopes = p.slopes.data();
  }
  a.mask = c.mask;
  a.window = c.window;
  a.softcap = c.softcap;
  a.scale = c.scale;
  a.dropout_p = c.dropout_p;
  a.dropout_seed = 0x1234567890abcdefull;
  a.dropout_offset = 42;
}

// L = sum(d_o * o), the loss whose gradients backward() returns.
double loss(const AttentionArgs& a, const std::vector<double>& d_o) {
  const reference::Result r = reference::forward(a, 1);
  double l = 0.0;
  for (size_t i = 0; i < r.out.size(); ++i) l += d_o[i] * r.out[i];
  return l;
}

// Central differences of the loss over every element of `t` (logical row-major order).
std::vector<double> finite_differences(AttentionArgs& a, test::HostTensor& t,
                                       const std::vector<double>& d_o) {
  constexpr float h = 1.0f / 1024.0f;
  std::vector<double> out;
  const auto& sh = t.ref.shape;
  const auto& st = t.ref.stride;
  for (int64_t i0 = 0; i0 < sh[0]; ++i0)
    for (int64_t i1 = 0; i1 < sh[1]; ++i1)
      for (int64_t i2 = 0; i2 < sh[2]; ++i2)
        for (int64_t i3 = 0; i3 < sh[3]; ++i3) {
          const int64_t off = i0 * st[0] + i1 * st[1] + i2 * st[2] + i3 * st[3];
          auto* x = static_cast<float*>(t.data()) + off;
          const float x0 = *x;
          *x = x0 + h;
          const double up = loss(a, d_o);
          *x = x0 - h;
          const double down = loss(a, d_o);
          *x = x0;
          out.push_back((up - down) / (2.0 * double(h)));
        }
  return out;
}

std::vector<FdCase> fd_cases() {
  std::vector<FdCase> cs;
  cs.push_back({.name = "plain"});
  cs.push_back({.name = "causal", .sq = 7, .sk = 5, .mask = MaskKind::causal});
  cs.push_back({.name = "causal_bottom_right", .sq = 7, .sk = 5, .mask = MaskKind::causal_bottom_right});
  cs.push_back({.name = "window", .window = Window{2, 1}});
  cs.push_back({.name = "causal_window_gqa", .hq = 4, .hkv = 1, .mask = MaskKind::causal, .window = Window{1, 0}});
  cs.push_back({.name = "gqa_dv_differs", .hq = 4, .hkv = 2, .d = 16, .dv = 8});
  cs.push_back({.name = "softcap_scale", .softcap = 1.5f, .scale = 0.9f});
  cs.push_back({.name = "alibi_causal", .mask = MaskKind::causal, .alibi = true});
  cs.push_back({.name = "bias_full", .bias_shape = std::array<int64_t, 4>{2, 2, 5, 7}});
  cs.push_back({.name = "bias_broadcast_b_q", .bias_shape = std::array<int64_t, 4>{1, 2, 1, 7}});
  cs.push_back({.name = "bias_broadcast_k_gqa", .hq = 4, .hkv = 2, .bias_shape = std::array<int64_t, 4>{2, 1, 5, 1}});
  cs.push_back({.name = "packed_causal_br", .mask = MaskKind::causal_bottom_right,
                .varlen = VarlenKind::packed, .lens_q = {3, 1, 4}, .lens_k = {5, 2, 1}});
  cs.push_back({.name = "padded_bias", .bias_shape = std::array<int64_t, 4>{2, 1, 5, 7},
                .varlen = VarlenKind::padded, .lens_q = {5, 2}, .lens_k = {3, 7}});
  cs.push_back({.name = "dropout", .dropout_p = 0.3f});
  cs.push_back({.name = "everything", .hq = 4, .hkv = 2, .mask = MaskKind::causal, .window = Window{3, 0},
                .softcap = 2.0f, .bias_shape = std::array<int64_t, 4>{1, 4, 4, 6}, .alibi = true,
                .varlen = VarlenKind::packed, .lens_q = {4, 2}, .lens_k = {6, 3}, .dropout_p = 0.2f});
  return cs;
}

void PrintTo(const FdCase& c, std::ostream* os) { *os << c.name; }

class FiniteDifferences : public ::testing::TestWithParam<FdCase> {};

TEST_P(FiniteDifferences, GradientsMatch) {
  const FdCase& c = GetParam();
  std::mt19937_64 rng = test::seeded_rng();
  Problem p;
  build(c, p, rng);
  const std::vector<double> d_o = test::to_double(p.d_o.ref);
  const reference::Gradients g = reference::backward(p.args, p.d_o.ref, c.bias_shape.has_value(), 1);
  // The analytic gradients must not be trivially zero, or the comparison proves nothing.
  for (const auto* grad : {&g.dq, &g.dk, &g.dv}) {
    double norm = 0;
    for (double x : *grad) norm += x * x;
    EXPECT_GT(norm, 1e-6);
  }
  // Random values make the softmax smooth: O(h^2) truncation is ~1e-6 of the gradients.
  constexpr double kTol = 1e-5;
  EXPECT_LT(relative_error(g.dq, finite_differences(p.args, p.q, d_o)), kTol) << "dq";
  EXPECT_LT(relative_error(g.dk, finite_differences(p.args, p.k, d_o)), kTol) << "dk";
  EXPECT_LT(relative_error(g.dv, finite_differences(p.args, p.v, d_o)), kTol) << "dv";
  if (c.bias_shape) {
    EXPECT_LT(relative_error(g.dbias, finite_differences(p.args, p.bias, d_o)), kTol) << "dbias";
  }
}

INSTANTIATE_TEST_SUITE_P(ReferenceBackward, FiniteDifferences, ::testing::ValuesIn(fd_cases()),
                         [](const auto& info) { return info.param.name; });

TEST(ReferenceBackward, FullyMaskedRowsGiveZeroGradients) {
  // Top-left causal with more queries... bottom-right with sq > sk: the first sq - sk rows see
  // no key at all.
  FdCase c{.name = "masked", .sq = 7, .sk = 3, .mask = MaskKind::causal_bottom_right};
  std::mt19937_64 rng = test::seeded_rng();
  Problem p;
  build(c, p, rng);
  const reference::Gradients g = reference::backward(p.args, p.d_o.ref, false, 1);
  for (int64_t b = 0; b < c.b; ++b)
    for (int64_t i = 0; i < c.sq - c.sk; ++i)
      for (int64_t e = 0; e < c.hq * c.d; ++e) {
        EXPECT_EQ(g.dq[static_cast<size_t>((b * c.sq + i) * c.hq * c.d + e)], 0.0);
      }
  for (double x : g.dq) EXPECT_TRUE(std::isfinite(x));
}

TEST(ReferenceBackward, DropoutZeroEqualsNoDropout) {
  FdCase c{.name = "p0", .mask = MaskKind::causal, .bias_shape = std::array<int64_t, 4>{2, 2, 5, 7}};
  std::mt19937_64 rng = test::seeded_rng();
  Problem p;
  build(c, p, rng);
  const reference::Gradients off = reference::backward(p.args, p.d_o.ref, true, 1);
  p.args.dropout_seed = 99;  // p = 0: seed and offset must not matter
  p.args.dropout_offset = 7;
  const reference::Gradients zero = reference::backward(p.args, p.d_o.ref, true, 1);
  EXPECT_EQ(off.dq, zero.dq);
  EXPECT_EQ(off.dk, zero.dk);
  EXPECT_EQ(off.dv, zero.dv);
  EXPECT_EQ(off.dbias, zero.dbias);
  EXPECT_EQ(off.forward.out, zero.forward.out);
}

TEST(ReferenceBackward, RejectsMismatchedDo) {
  FdCase c{.name = "bad"};
  std::mt19937_64 rng = test::seeded_rng();
  Problem p;
  build(c, p, rng);
  TensorRef bad = p.d_o.ref;
  bad.shape[1] += 1;
  try {
    reference::backward(p.args, bad, false, 1);
    FAIL() << "accepted a d_o of the wrong shape";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(e.argument(), "d_o.shape[1]");
  }
}

// Known-answer vectors of Random123 (kat_vectors, philox4x32_10).
TEST(Philox, MatchesKnownAnswerVectors) {
  struct Kat {
    std::array<uint32_t, 4> ctr;
    std::array<uint32_t, 2> key;
    std::array<uint32_t, 4> out;
  };
  const Kat kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
      {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
       {0xffffffffu, 0xffffffffu},
       {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
      {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
       {0xa4093822u, 0x299f31d0u},
       {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
  };
  for (const Kat& k : kats) {
    const jitattn_kernel::Philox4 r =
        jitattn_kernel::philox4x32_10(k.ctr[0], k.ctr[1], k.ctr[2], k.ctr[3], k.key[0], k.key[1]);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(r.x[i], k.out[static_cast<size_t>(i)]) << std::hex << i;
  }
}

TEST(Philox, KeptFractionIsOneMinusPAndStreamsDiffer) {
  for (float prob : {0.1f, 0.5f, 0.9f}) {
    const uint32_t threshold = dropout_threshold(prob);
    int64_t kept = 0, same = 0;
    const int64_t n = 200000;
    for (int64_t e = 0; e < n; ++e) {
      const auto row = static_cast<uint32_t>(e / 1000), col = static_cast<uint32_t>(e % 1000);
      const bool k1 = jitattn_kernel::dropout_keep(7, 0, 3, row, col, threshold);
      const bool k2 = jitattn_kernel::dropout_keep(7, uint64_t{1} << 32, 3, row, col, threshold);
      kept += k1;
      same += k1 == k2;
    }
    // Binomial: standard deviation below 0.0012 at n = 200000.
    EXPECT_NEAR(double(kept) / double(n), 1.0 - prob, 0.006) << prob;
    // An offset that differs only in its high half gives an independent mask.
    const double agree = prob * prob + (1 - prob) * (1 - prob);
    EXPECT_NEAR(double(same) / double(n), agree, 0.006) << prob;
  }
  EXPECT_EQ(dropout_threshold(0.0f), 0u);
  EXPECT_EQ(dropout_threshold(0.5f), 0x80000000u);
}

// The four decisions of one call (the Hopper kernels' unit) are dropout_keep's, column by column.
TEST(Philox, FourAtOnceMatchOneAtATime) {
  const uint32_t threshold = dropout_threshold(0.3f);
  int kept = 0;
  for (uint32_t row = 0; row < 64; ++row) {
    for (uint32_t col = 0; col < 256; ++col) {
      const unsigned bits = jitattn_kernel::dropout_keep4(99, 12345, 5, row, col, threshold);
      ASSERT_LT(bits, 16u);
      const bool one = jitattn_kernel::dropout_keep(99, 12345, 5, row, col, threshold);
      EXPECT_EQ(((bits >> (col % 4)) & 1u) != 0u, one) << row << " " << col;
      kept += one;
    }
  }
  EXPECT_GT(kept, 64 * 256 / 2);  // about 70% kept: the bits are not all zero or all one
  EXPECT_LT(kept, 64 * 256 * 9 / 10);
}

}  // namespace
}  // namespace jitattn
