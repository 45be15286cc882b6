// reference::forward against a naive implementation written here from attention.h's text: the
// whole score matrix is materialised with an explicit per-element mask predicate, then an
// explicit softmax. The two share only the input gathering (test::to_double).
#include "runtime/reference.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <optional>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "jitattn/error.h"
#include "runtime/numeric.h"
#include "tests/test_util.h"

namespace jitattn {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

struct Case {
  DType dtype = DType::bf16;
  int64_t b = 2, sq = 7, sk = 9, hq = 4, hkv = 2, d = 16, dv = 16;
  MaskKind mask = MaskKind::none;
  std::optional<Window> window;
  float softcap = 0.0f;
  std::optional<float> scale;
  std::optional<std::array<int64_t, 4>> bias_shape;
  bool alibi = false;
  VarlenKind varlen = VarlenKind::none;
  // packed: per-sequence lengths (b, sq, sk are derived); padded: seqused (empty = null).
  std::vector<int32_t> lens_q, lens_k;
  std::array<int, 4> perm = {0, 1, 2, 3};
  std::array<int, 4> bias_perm = {0, 1, 2, 3};
};

struct Inputs {
  test::HostTensor q, k, v, bias;
  std::vector<float> slopes;
  std::vector<int32_t> cu_q, cu_k;
  AttentionArgs args;
};

std::vector<int32_t> offsets(const std::vector<int32_t>& lens) {
  std::vector<int32_t> cu(1, 0);
  for (int32_t n : lens) cu.push_back(cu.back() + n);
  return cu;
}

Inputs make_inputs(Case& c, std::mt19937_64& rng) {
  Inputs in;
  AttentionArgs& a = in.args;
  a.varlen = c.varlen;
  int64_t batch_dim = c.b;
  if (c.varlen == VarlenKind::packed) {
    in.cu_q = offsets(c.lens_q);
    in.cu_k = offsets(c.lens_k);
    c.b = static_cast<int64_t>(c.lens_q.size());
    c.sq = in.cu_q.back();
    c.sk = in.cu_k.back();
    batch_dim = 1;
    a.batch = static_cast<int>(c.b);
    a.max_seqlen_q = *std::max_element(c.lens_q.begin(), c.lens_q.end());
    a.max_seqlen_k = *std::max_element(c.lens_k.begin(), c.lens_k.end());
    a.cu_seqlens_q = in.cu_q.data();
    a.cu_seqlens_k = in.cu_k.data();
  } else if (c.varlen == VarlenKind::padded) {
    if (!c.lens_q.empty()) a.seqused_q = c.lens_q.data();
    if (!c.lens_k.empty()) a.seqused_k = c.lens_k.data();
  }
  in.q = test::random_tensor(c.dtype, {batch_dim, c.sq, c.hq, c.d}, rng, -1, 1, c.perm);
  in.k = test::random_tensor(c.dtype, {batch_dim, c.sk, c.hkv, c.d}, rng, -1, 1, c.perm);
  in.v = test::random_tensor(c.dtype, {batch_dim, c.sk, c.hkv, c.dv}, rng, -1, 1, c.perm);
  a.q = in.q.ref;
  a.k = in.k.ref;
  a.v = in.v.ref;
  a.o = a.q;  // shape only: the reference never writes o
  a.o.data = nullptr;
  a.o.shape[3] = c.dv;
  a.o.stride = test::permuted_strides(a.o.shape, c.perm);
  a.mask = c.mask;
  a.window = c.window;
  a.softcap = c.softcap;
  a.scale = c.scale;
  if (c.bias_shape) {
    in.bias = test::random_tensor(c.dtype, *c.bias_shape, rng, -2, 2, c.bias_perm);
    a.bias = in.bias.ref;
  }
  if (c.alibi) {
    std::uniform_real_distribution<float> slope(0.05f, 1.0f);
    for (int64_t h = 0; h < c.hq; ++h) in.slopes.push_back(slope(rng));
    a.alibi_slopes = in.slopes.data();
  }
  return in;
}

// A tensor gathered into logical order, indexed by its four logical coordinates.
struct Logical {
  std::vector<double> values;
  std::array<int64_t, 4> shape{};

  explicit Logical(const TensorRef& t) : values(test::to_double(t)), shape(t.shape) {}
  double operator()(int64_t a, int64_t b, int64_t c, int64_t d) const {
    return values[static_cast<size_t>(((a * shape[1] + b) * shape[2] + c) * shape[3] + d)];
  }
  // Broadcast read: a dim of size 1 is always read at 0.
  double broadcast(int64_t a, int64_t b, int64_t c, int64_t d) const {
    return (*this)(shape[0] == 1 ? 0 : a, shape[1] == 1 ? 0 : b, shape[2] == 1 ? 0 : c,
                   shape[3] == 1 ? 0 : d);
  }
};

// Straight from attention.h: materialise every score, mask with the literal predicate.
reference::Result naive(const Case& c, const Inputs& in) {
  const Logical q(in.q.ref), k(in.k.ref), v(in.v.ref);
  const std::optional<Logical> bias =
      c.bias_shape ? std::optional<Logical>(Logical(in.bias.ref)) : std::nullopt;
  const bool packed = c.varlen == VarlenKind::packed;
  reference::Result r;
  r.rows_q = packed ? c.sq : c.b * c.sq;
  r.heads_q = c.hq;
  r.head_dim_v = c.dv;
  r.out.assign(static_cast<size_t>(r.rows_q * c.hq * c.dv), 0.0);
  r.lse.assign(static_cast<size_t>(r.rows_q * c.hq), kNegInf);
  const double scale =
      c.scale ? double(*c.scale) : double(static_cast<float>(1.0 / std::sqrt(double(c.d))));
  auto at = [](const std::vector<int32_t>& x, int64_t b) { return x[static_cast<size_t>(b)]; };

  for (int64_t b = 0; b < c.b; ++b) {
    const int64_t tb = packed ? 0 : b;  // batch index into the tensors
    const int64_t q0 = packed ? at(in.cu_q, b) : 0;
    const int64_t k0 = packed ? at(in.cu_k, b) : 0;
    int64_t lq = c.sq, lk = c.sk;
    if (packed || (c.varlen == VarlenKind::padded && !c.lens_q.empty())) lq = at(c.lens_q, b);
    if (packed || (c.varlen == VarlenKind::padded && !c.lens_k.empty())) lk = at(c.lens_k, b);
    const int64_t off = c.mask == MaskKind::causal_bottom_right ? lk - lq : 0;
    for (int64_t h = 0; h < c.hq; ++h) {
      const int64_t hk = h / (c.hq / c.hkv);
      // scores: (lq, lk), -inf where masked.
      std::vector<double> s(static_cast<size_t>(lq * lk), kNegInf);
      for (int64_t i = 0; i < lq; ++i) {
        for (int64_t j = 0; j < lk; ++j) {
          bool allowed = true;
          if (c.mask != MaskKind::none) allowed = allowed && j <= i + off;
          if (c.window && c.window->left >= 0) {
            allowed = allowed && j - (i + off) >= -c.window->left;
          }
          if (c.window && c.window->right >= 0) {
            allowed = allowed && j - (i + off) <= c.window->right;
          }
          if (!allowed) continue;
          double dot = 0;
          for (int64_t e = 0; e < c.d; ++e) dot += q(tb, q0 + i, h, e) * k(tb, k0 + j, hk, e);
          double x = scale * dot;
          if (c.softcap > 0) x = c.softcap * std::tanh(x / c.softcap);
          if (bias) x += bias->broadcast(b, h, i, j);
          if (c.alibi)
            x -= double(in.slopes[static_cast<size_t>(h)]) * std::fabs(double(i + off - j));
          s[static_cast<size_t>(i * lk + j)] = x;
        }
      }
      for (int64_t i = 0; i < lq; ++i) {
        const auto row = s.begin() + i * lk;
        const double m = lk == 0 ? kNegInf : *std::max_element(row, row + lk);
        if (m == kNegInf) continue;
        std::vector<double> p(row, row + lk);
        double sum = 0;
        for (double& x : p) sum += x = std::exp(x - m);
        for (double& x : p) x /= sum;
        const int64_t out_row = packed ? q0 + i : b * c.sq + i;
        for (int64_t e = 0; e < c.dv; ++e) {
          double o = 0;
          for (int64_t j = 0; j < lk; ++j) o += p[static_cast<size_t>(j)] * v(tb, k0 + j, hk, e);
          r.out[static_cast<size_t>((out_row * c.hq + h) * c.dv + e)] = o;
        }
        const int64_t lse_index = packed ? h * c.sq + out_row : (b * c.hq + h) * c.sq + i;
        r.lse[static_cast<size_t>(lse_index)] = m + std::log(sum);
      }
    }
  }
  return r;
}

// Runs both and compares; returns the reference's result for further checks.
reference::Result check(Case c, std::mt19937_64& rng) {
  const Inputs in = make_inputs(c, rng);
  const reference::Result got = reference::forward(in.args);
  const reference::Result want = naive(c, in);
  EXPECT_EQ(got.rows_q, want.rows_q);
  EXPECT_EQ(got.heads_q, want.heads_q);
  EXPECT_EQ(got.head_dim_v, want.head_dim_v);
  EXPECT_EQ(got.out.size(), want.out.size());
  EXPECT_EQ(got.lse.size(), want.lse.size());
  for (double x : got.out) {
    if (!std::isfinite(x)) {
      ADD_FAILURE() << "non-finite output " << x;
      break;
    }
  }
  for (double x : got.lse) {
    if (std::isnan(x) || x == std::numeric_limits<double>::infinity()) {
      ADD_FAILURE() << "bad lse " << x;
      break;
    }
  }
  EXPECT_LT(relative_error(got.out, want.out), 1e-12);
  EXPECT_LT(relative_error(got.lse, want.lse), 1e-12);
  // The masked pattern must match exactly, not just in norm.
  for (size_t i = 0; i < got.lse.size() && i < want.lse.size(); ++i) {
    if ((got.lse[i] == kNegInf) != (want.lse[i] == kNegInf)) {
      ADD_FAILURE() << "lse " << i << ": " << got.lse[i] << " vs " << want.lse[i];
      break;
    }
  }
  return got;
}

int64_t masked_rows(const reference::Result& r) {
  return std::count(r.lse.begin(), r.lse.end(), kNegInf);
}

class Reference : public ::testing::TestWithParam<DType> {
 protected:
  std::mt19937_64 rng_ = test::seeded_rng();
  Case base() const {
    Case c;
    c.dtype = GetParam();
    return c;
  }
};

TEST_P(Reference, MaskKinds) {
  for (MaskKind m : {MaskKind::none, MaskKind::causal, MaskKind::causal_bottom_right}) {
    for (auto [sq, sk] : {std::pair<int64_t, int64_t>{7, 7}, {5, 11}, {11, 5}}) {
      SCOPED_TRACE(::testing::Message() << "mask " << int(m) << " sq " << sq << " sk " << sk);
      Case c = base();
      c.mask = m;
      c.sq = sq;
      c.sk = sk;
      const reference::Result r = check(c, rng_);
      // Bottom-right causal with more queries than keys: the first sq - sk rows see nothing.
      if (m == MaskKind::causal_bottom_right && sq > sk) {
        EXPECT_EQ(masked_rows(r), c.b * c.hq * (sq - sk));
      }
    }
  }
}

TEST_P(Reference, SlidingWindows) {
  for (MaskKind m : {MaskKind::none, MaskKind::causal, MaskKind::causal_bottom_right}) {
    for (Window w : {Window{2, 1}, Window{-1, 0}, Window{0, 0}, Window{3, -1}, Window{0, -1}}) {
      SCOPED_TRACE(::testing::Message()
                   << "mask " << int(m) << " window " << w.left << "," << w.right);
      Case c = base();
      c.mask = m;
      c.window = w;
      c.sq = 9;
      c.sk = 6;
      check(c, rng_);
    }
  }
}

TEST_P(Reference, BiasBroadcasts) {
  for (std::array<int64_t, 4> shape :
       {std::array<int64_t, 4>{2, 4, 7, 9}, {1, 4, 7, 9}, {2, 1, 1, 9}, {1, 1, 7, 1}}) {
    SCOPED_TRACE(::testing::Message()
                 << shape[0] << "x" << shape[1] << "x" << shape[2] << "x" << shape[3]);
    Case c = base();
    c.bias_shape = shape;
    c.mask = MaskKind::causal;
    check(c, rng_);
    c.bias_perm = {2, 0, 1, 3};  // any physical order of the leading dims
    check(c, rng_);
  }
}

TEST_P(Reference, AlibiAndSoftcap) {
  Case c = base();
  c.alibi = true;
  check(c, rng_);
  c.mask = MaskKind::causal_bottom_right;
  c.sq = 4;
  c.sk = 10;
  check(c, rng_);
  c = base();
  c.softcap = 0.5f;  // small enough that tanh saturates visibly
  c.scale = 2.0f;
  check(c, rng_);
  c.alibi = true;
  c.bias_shape = std::array<int64_t, 4>{2, 4, 7, 9};
  c.window = Window{3, 2};
  check(c, rng_);
}

TEST_P(Reference, GroupedQueryAndHeadDims) {
  Case c = base();
  c.hq = 6;
  c.hkv = 1;
  check(c, rng_);
  c.hkv = 3;
  c.d = 24;
  c.dv = 8;
  check(c, rng_);
  c.perm = {0, 2, 1, 3};  // [batch, heads, seq, dim]
  check(c, rng_);
  c.perm = {1, 2, 0, 3};
  check(c, rng_);
}

TEST_P(Reference, PackedVarlen) {
  Case c = base();
  c.varlen = VarlenKind::packed;
  c.lens_q = {5, 0, 9, 3};
  c.lens_k = {7, 4, 9, 1};
  check(c, rng_);
  c.mask = MaskKind::causal_bottom_right;
  c.alibi = true;
  c.bias_shape = std::array<int64_t, 4>{4, 1, 9, 9};
  const reference::Result r = check(c, rng_);
  // Sequence 3 has 3 queries and 1 key: bottom-right alignment leaves its first 2 rows empty.
  for (int64_t h = 0; h < c.hq; ++h) {
    EXPECT_EQ(r.lse[static_cast<size_t>(h * 17 + 14)], kNegInf);
    EXPECT_EQ(r.lse[static_cast<size_t>(h * 17 + 15)], kNegInf);
    EXPECT_NE(r.lse[static_cast<size_t>(h * 17 + 16)], kNegInf);
  }
  c.mask = MaskKind::causal;
  c.window = Window{1, 1};
  c.bias_shape = std::array<int64_t, 4>{1, 4, 12, 10};  // larger than the longest sequence
  check(c, rng_);
}

TEST_P(Reference, PaddedVarlen) {
  Case c = base();
  c.b = 3;
  c.varlen = VarlenKind::padded;
  c.lens_q = {7, 3, 0};
  c.lens_k = {2, 9, 5};
  c.mask = MaskKind::causal_bottom_right;
  const reference::Result r = check(c, rng_);
  // Rows at or beyond seqused_q are 0 / -inf.
  for (int64_t i = 3; i < 7; ++i) {
    for (int64_t h = 0; h < c.hq; ++h) {
      EXPECT_EQ(r.lse[static_cast<size_t>((1 * c.hq + h) * 7 + i)], kNegInf);
      for (int64_t e = 0; e < c.dv; ++e) {
        EXPECT_EQ(r.out[static_cast<size_t>(((1 * 7 + i) * c.hq + h) * c.dv + e)], 0.0);
      }
    }
  }
  c.lens_q.clear();  // seqused_q null: full length
  c.mask = MaskKind::none;
  c.bias_shape = std::array<int64_t, 4>{3, 1, 1, 9};
  check(c, rng_);
}

TEST_P(Reference, FullyMaskedRowsAreZeroNotNaN) {
  Case c = base();
  c.mask = MaskKind::causal;
  c.window = Window{-1, 0};
  c.sq = 6;
  c.sk = 3;  // top-left causal: rows 3..5 see keys 0..2; window right 0 keeps that
  check(c, rng_);
  // A -inf bias over a whole row (row 2) masks it too.
  c.bias_shape = std::array<int64_t, 4>{1, 1, 6, 3};
  Inputs in = make_inputs(c, rng_);
  for (int64_t j = 0; j < 3; ++j) {
    store_from_float(in.bias.data(), c.dtype, 2 * in.bias.ref.stride[2] + j,
                     -std::numeric_limits<float>::infinity());
  }
  const reference::Result r = reference::forward(in.args);
  for (int64_t b = 0; b < c.b; ++b) {
    for (int64_t h = 0; h < c.hq; ++h) {
      EXPECT_EQ(r.lse[static_cast<size_t>((b * c.hq + h) * 6 + 2)], kNegInf);
      EXPECT_NE(r.lse[static_cast<size_t>((b * c.hq + h) * 6 + 3)], kNegInf);
      for (int64_t e = 0; e < c.dv; ++e) {
        EXPECT_EQ(r.out[static_cast<size_t>(((b * 6 + 2) * c.hq + h) * c.dv + e)], 0.0);
      }
    }
  }
  for (double x : r.out) ASSERT_FALSE(std::isnan(x));
}

INSTANTIATE_TEST_SUITE_P(DTypes, Reference, ::testing::Values(DType::f16, DType::bf16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(ReferenceExact, SingleKeyCopiesValue) {
  std::mt19937_64 rng = test::seeded_rng();
  Case c;
  c.sk = 1;
  c.sq = 3;
  const Inputs in = make_inputs(c, rng);
  const reference::Result r = reference::forward(in.args);
  const std::vector<double> v = test::to_double(in.v.ref);
  for (int64_t b = 0; b < c.b; ++b)
    for (int64_t i = 0; i < c.sq; ++i)
      for (int64_t h = 0; h < c.hq; ++h)
        for (int64_t e = 0; e < c.dv; ++e)
          EXPECT_EQ(r.out[static_cast<size_t>(((b * c.sq + i) * c.hq + h) * c.dv + e)],
                    v[static_cast<size_t>((b * c.hkv + h / 2) * c.dv + e)]);
}

TEST(ReferenceExact, ThreadCountDoesNotChangeResults) {
  std::mt19937_64 rng = test::seeded_rng();
  Case c;
  c.sq = 300;  // several row blocks per head
  c.sk = 200;
  c.mask = MaskKind::causal_bottom_right;
  const Inputs in = make_inputs(c, rng);
  const reference::Result one = reference::forward(in.args, 1);
  const reference::Result many = reference::forward(in.args, 3);
  EXPECT_EQ(one.out, many.out);
  EXPECT_EQ(one.lse, many.lse);
}

TEST(ReferenceExact, EmptyProblemGivesSizedResult) {
  AttentionArgs a;
  a.q = TensorRef::contiguous(nullptr, DType::bf16, {2, 3, 4, 16});
  a.k = TensorRef::contiguous(nullptr, DType::bf16, {2, 0, 4, 16});
  a.v = a.k;
  a.o = a.q;
  alignas(16) static const uint16_t q_storage[2 * 3 * 4 * 16] = {};
  a.q.data = q_storage;  // q has elements, so it needs memory even with no keys
  const reference::Result r = reference::forward(a);
  EXPECT_EQ(r.rows_q, 6);
  EXPECT_EQ(r.out, std::vector<double>(6 * 4 * 16, 0.0));
  EXPECT_EQ(r.lse, std::vector<double>(6 * 4, kNegInf));
}

TEST(ReferenceExact, RejectsBadSequenceMetadata) {
  std::mt19937_64 rng = test::seeded_rng();
  Case c;
  c.varlen = VarlenKind::packed;
  c.lens_q = {3, 4};
  c.lens_k = {3, 4};
  Inputs in = make_inputs(c, rng);
  in.cu_q[1] = 5;  // 0, 5, 7: length 5 > max_seqlen_q 4
  try {
    reference::forward(in.args);
    ADD_FAILURE() << "accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(e.argument(), "cu_seqlens_q");
  }
  c = Case{};
  c.varlen = VarlenKind::padded;
  c.lens_k = {9, 10};  // 10 > seqlen_k 9
  in = make_inputs(c, rng);
  try {
    reference::forward(in.args);
    ADD_FAILURE() << "accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(e.argument(), "seqused_k");
  }
}

}  // namespace
}  // namespace jitattn
