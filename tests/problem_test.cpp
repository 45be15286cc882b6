// validate(): one test per kind of bad input (checking the exception type and the argument it
// names), plus the valid cases the kernels rely on being accepted (layouts, GQA, empty problems).
#include "runtime/problem.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include <gtest/gtest.h>

#include "jitattn/error.h"
#include "tests/test_util.h"

namespace jitattn {
namespace {

// validate() never dereferences, so distinct fake 16-byte aligned addresses are enough.
const void* fake_pointer(int n) {
  return reinterpret_cast<const void*>(uintptr_t{0x100000} + static_cast<uintptr_t>(n) * 0x10000);
}

TensorRef tensor(int n, DType t, std::array<int64_t, 4> shape,
                 std::array<int, 4> perm = {0, 1, 2, 3}, int64_t row_pad = 0) {
  TensorRef r;
  r.data = fake_pointer(n);
  r.dtype = t;
  r.shape = shape;
  r.stride = test::permuted_strides(shape, perm, row_pad);
  return r;
}

struct Dims {
  int64_t b = 2, sq = 33, sk = 47, hq = 8, hkv = 2, d = 64, dv = 64;
};

AttentionArgs make_args(Dims s = {}, DType t = DType::bf16, std::array<int, 4> perm = {0, 1, 2, 3},
                        int64_t row_pad = 0) {
  AttentionArgs a;
  a.q = tensor(1, t, {s.b, s.sq, s.hq, s.d}, perm, row_pad);
  a.k = tensor(2, t, {s.b, s.sk, s.hkv, s.d}, perm, row_pad);
  a.v = tensor(3, t, {s.b, s.sk, s.hkv, s.dv}, perm, row_pad);
  a.o = tensor(4, t, {s.b, s.sq, s.hq, s.dv}, perm, row_pad);
  return a;
}

// Packed: 3 sequences, 100 query and 120 key tokens in total.
AttentionArgs make_packed_args() {
  AttentionArgs a =
      make_args({.b = 1, .sq = 100, .sk = 120, .hq = 4, .hkv = 4, .d = 128, .dv = 128});
  a.varlen = VarlenKind::packed;
  a.batch = 3;
  a.max_seqlen_q = 50;
  a.max_seqlen_k = 60;
  a.cu_seqlens_q = static_cast<const int32_t*>(fake_pointer(10));
  a.cu_seqlens_k = static_cast<const int32_t*>(fake_pointer(11));
  return a;
}

void expect_invalid(const AttentionArgs& a, const std::string& argument) {
  try {
    validate(a);
    ADD_FAILURE() << "accepted; expected InvalidArgument naming " << argument;
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(e.argument(), argument) << e.what();
    // The message says what was given, after the argument name.
    EXPECT_GT(std::string(e.what()).size(), argument.size() + 10) << e.what();
  }
}

TEST(Problem, ValidResolvesSizesAndDefaults) {
  const Problem p = validate(make_args());
  EXPECT_EQ(p.dtype, DType::bf16);
  EXPECT_EQ(p.batch, 2);
  EXPECT_EQ(p.seqlen_q, 33);
  EXPECT_EQ(p.seqlen_k, 47);
  EXPECT_EQ(p.total_q, 33);
  EXPECT_EQ(p.total_k, 47);
  EXPECT_EQ(p.heads_q, 8);
  EXPECT_EQ(p.heads_kv, 2);
  EXPECT_EQ(p.head_dim, 64);
  EXPECT_EQ(p.head_dim_v, 64);
  EXPECT_FLOAT_EQ(p.scale, 0.125f);
  EXPECT_FALSE(p.window || p.bias || p.alibi || p.lse || p.empty());
}

TEST(Problem, DefaultScaleIsInverseSqrtHeadDim) {
  for (int64_t d : {8, 80, 96, 256}) {
    const Problem p = validate(make_args({.d = d, .dv = 32}));
    EXPECT_EQ(p.scale, static_cast<float>(1.0 / std::sqrt(double(d))));
  }
  AttentionArgs a = make_args();
  a.scale = 0.3f;
  EXPECT_EQ(validate(a).scale, 0.3f);
}

TEST(Problem, CopiesModifiers) {
  AttentionArgs a = make_args();
  a.mask = MaskKind::causal_bottom_right;
  a.window = Window{16, 0};
  a.softcap = 30.0f;
  a.alibi_slopes = static_cast<const float*>(fake_pointer(20));
  a.lse = reinterpret_cast<float*>(uintptr_t{0x100004});
  const Problem p = validate(a);
  EXPECT_EQ(p.mask, MaskKind::causal_bottom_right);
  EXPECT_TRUE(p.window);
  EXPECT_EQ(p.window_left, 16);
  EXPECT_EQ(p.window_right, 0);
  EXPECT_EQ(p.softcap, 30.0f);
  EXPECT_TRUE(p.alibi);
  EXPECT_TRUE(p.lse);
}

TEST(Problem, AcceptsLayoutPermutations) {
  for (std::array<int, 4> perm :
       {std::array<int, 4>{0, 1, 2, 3}, {0, 2, 1, 3}, {1, 0, 2, 3}, {2, 0, 1, 3}, {1, 2, 0, 3}}) {
    for (int64_t pad : {0, 8, 24}) {
      EXPECT_NO_THROW(validate(make_args({}, DType::f16, perm, pad)))
          << perm[0] << perm[1] << perm[2] << perm[3] << " pad " << pad;
    }
  }
}

TEST(Problem, IgnoresStridesOfSizeOneDims) {
  AttentionArgs a = make_args({.b = 1, .sq = 1});
  a.q.stride[0] = 3;   // batch 1: never stepped along
  a.q.stride[1] = -5;  // seqlen 1
  a.o.stride[1] = 0;
  EXPECT_NO_THROW(validate(a));
}

TEST(Problem, AcceptsGroupedQueryAttention) {
  for (int64_t hkv : {1, 2, 4, 12}) {
    const Problem p = validate(make_args({.hq = 12, .hkv = hkv}));
    EXPECT_EQ(p.heads_q, 12);
    EXPECT_EQ(p.heads_kv, hkv);
  }
  EXPECT_NO_THROW(validate(make_args({.d = 192, .dv = 128})));  // head_dim != head_dim_v
}

TEST(Problem, EmptyProblemsAreValidWithoutData) {
  AttentionArgs a = make_args({.b = 0});
  a.q.data = a.k.data = a.v.data = a.o.data = nullptr;
  EXPECT_TRUE(validate(a).empty());

  a = make_args({.sq = 0});
  a.q.data = a.o.data = nullptr;
  EXPECT_TRUE(validate(a).empty());

  // No keys: every query row is fully masked; q and o still hold elements and need memory.
  a = make_args({.sk = 0});
  a.k.data = a.v.data = nullptr;
  EXPECT_TRUE(validate(a).empty());
  a.q.data = nullptr;
  expect_invalid(a, "q.data");

  a = make_packed_args();
  a.batch = 0;
  a.max_seqlen_q = a.max_seqlen_k = 0;
  a.cu_seqlens_q = a.cu_seqlens_k = nullptr;
  EXPECT_TRUE(validate(a).empty());
}

TEST(Problem, PackedVarlenTakesCountsFromArgs) {
  const Problem p = validate(make_packed_args());
  EXPECT_EQ(p.varlen, VarlenKind::packed);
  EXPECT_EQ(p.batch, 3);
  EXPECT_EQ(p.seqlen_q, 50);
  EXPECT_EQ(p.seqlen_k, 60);
  EXPECT_EQ(p.total_q, 100);
  EXPECT_EQ(p.total_k, 120);
}

TEST(Problem, PaddedVarlenAcceptsSeqused) {
  AttentionArgs a = make_args();
  a.varlen = VarlenKind::padded;
  EXPECT_NO_THROW(validate(a));
  a.seqused_q = static_cast<const int32_t*>(fake_pointer(12));
  a.seqused_k = static_cast<const int32_t*>(fake_pointer(13));
  EXPECT_EQ(validate(a).varlen, VarlenKind::padded);
}

TEST(Problem, RejectsNullData) {
  for (const char* name : {"q", "k", "v", "o"}) {
    AttentionArgs a = make_args();
    TensorRef& t = name[0] == 'q' ? a.q : name[0] == 'k' ? a.k : name[0] == 'v' ? a.v : a.o;
    t.data = nullptr;
    expect_invalid(a, std::string(name) + ".data");
  }
}

TEST(Problem, RejectsMisalignedData) {
  AttentionArgs a = make_args();
  a.k.data = static_cast<const char*>(a.k.data) + 2;
  expect_invalid(a, "k.data");
  a = make_args();
  a.o.data = static_cast<const char*>(a.o.data) + 8;
  expect_invalid(a, "o.data");
}

// f32 is a valid problem (the CPU backend runs it); the GPU engine refuses it by itself.
TEST(Problem, AcceptsF32) { EXPECT_EQ(validate(make_args({}, DType::f32)).dtype, DType::f32); }

TEST(Problem, RejectsMixedDTypes) {
  AttentionArgs a = make_args();
  a.v.dtype = DType::f16;
  expect_invalid(a, "v.dtype");
  a = make_args();
  a.o.dtype = DType::f32;
  expect_invalid(a, "o.dtype");
}

TEST(Problem, RejectsInconsistentShapes) {
  AttentionArgs a = make_args();
  a.k.shape[0] = 3;
  expect_invalid(a, "k.shape[0]");
  a = make_args();
  a.k.shape[3] = 32;
  expect_invalid(a, "k.shape[3]");
  a = make_args();
  a.v.shape[1] = 46;
  expect_invalid(a, "v.shape[1]");
  a = make_args();
  a.v.shape[2] = 4;
  expect_invalid(a, "v.shape[2]");
  a = make_args();
  a.o.shape[1] = 32;
  expect_invalid(a, "o.shape[1]");
  a = make_args();
  a.o.shape[3] = 32;
  expect_invalid(a, "o.shape[3]");
  a = make_args();
  a.q.shape[1] = -1;
  expect_invalid(a, "q.shape[1]");
  a = make_args();
  a.k.shape[1] = int64_t{1} << 40;
  expect_invalid(a, "k.shape[1]");
}

TEST(Problem, RejectsHeadsNotDivisible) {
  expect_invalid(make_args({.hq = 12, .hkv = 5}), "k.shape[2]");
  expect_invalid(make_args({.hq = 4, .hkv = 0}), "k.shape[2]");
}

TEST(Problem, RejectsUnsupportedHeadDims) {
  for (int64_t d : {0, 4, 12, 100, 520, 1024}) {
    expect_invalid(make_args({.d = d, .dv = 64}), "head_dim");
  }
  expect_invalid(make_args({.d = 64, .dv = 520}), "head_dim_v");
  expect_invalid(make_args({.d = 64, .dv = 20}), "head_dim_v");
  expect_invalid(make_args({.d = 64, .dv = 260}), "head_dim_v");
  // The message names the range, so a caller knows the limit.
  try {
    validate(make_args({.d = 520, .dv = 64}));
    ADD_FAILURE() << "head_dim 520 accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("from 8 to 512"), std::string::npos) << e.what();
  }
}

TEST(Problem, AcceptsHeadDimsUpTo512) {
  for (int64_t d : {264, 320, 384, 448, 512}) {
    const Problem p = validate(make_args({.d = d, .dv = d}));
    EXPECT_EQ(p.head_dim, d);
    EXPECT_EQ(p.head_dim_v, d);
  }
  const Problem p = validate(make_args({.d = 512, .dv = 64}));
  EXPECT_EQ(p.head_dim, 512);
  EXPECT_EQ(p.head_dim_v, 64);
  EXPECT_EQ(validate(make_args({.d = 40, .dv = 512})).head_dim_v, 512);
}

TEST(Problem, RejectsNonContiguousLastDim) {
  AttentionArgs a = make_args();
  a.v.stride[3] = 2;
  expect_invalid(a, "v.stride[3]");
}

TEST(Problem, RejectsUnalignedOrNegativeStrides) {
  AttentionArgs a = make_args({}, DType::bf16, {0, 1, 2, 3}, 4);  // rows of 68 elements
  expect_invalid(a, "q.stride[2]");
  a = make_args();
  a.k.stride[0] = -a.k.stride[0];
  expect_invalid(a, "k.stride[0]");
  a = make_args();
  a.o.stride[1] = 0;  // rows would overlap
  expect_invalid(a, "o.stride[1]");
}

TEST(Problem, RejectsBadBias) {
  AttentionArgs a = make_args();
  a.bias = tensor(30, DType::f16, {2, 8, 33, 47});
  expect_invalid(a, "bias.dtype");
  a.bias = tensor(30, DType::bf16, {2, 8, 32, 47});
  expect_invalid(a, "bias.shape[2]");
  a.bias = tensor(30, DType::bf16, {3, 8, 33, 47});
  expect_invalid(a, "bias.shape[0]");
  a.bias = tensor(30, DType::bf16, {2, 8, 33, 47});
  a.bias.stride[3] = 2;
  expect_invalid(a, "bias.stride[3]");
  a.bias = tensor(30, DType::bf16, {2, 8, 33, 47});
  a.bias.data = static_cast<const char*>(a.bias.data) + 1;
  expect_invalid(a, "bias.data");
}

TEST(Problem, AcceptsBiasBroadcasts) {
  AttentionArgs a = make_args();
  for (std::array<int64_t, 4> shape : {std::array<int64_t, 4>{2, 8, 33, 47},
                                       {1, 8, 33, 47},
                                       {2, 1, 1, 47},
                                       {1, 1, 1, 1},
                                       {1, 1, 33, 1}}) {
    a.bias = tensor(30, DType::bf16, shape);
    EXPECT_TRUE(validate(a).bias);
  }
  // Packed: seq dims cover the longest sequence.
  a = make_packed_args();
  a.bias = tensor(30, DType::bf16, {3, 4, 64, 64});
  EXPECT_NO_THROW(validate(a));
  a.bias = tensor(30, DType::bf16, {1, 4, 50, 59});
  expect_invalid(a, "bias.shape[3]");
}

// Bias tiles (shared memory by cp.async or TMA) need 16-byte aligned rows of whole chunks, a
// contiguous key dim and distinct query rows; everything else is read per element.
TEST(Problem, BiasTileableOnlyForAlignedDistinctRows) {
  AttentionArgs a = make_args({.sq = 40, .sk = 64});
  auto tileable = [&](std::array<int64_t, 4> shape) {
    a.bias = tensor(30, DType::bf16, shape);
    return validate(a).bias_tileable;
  };
  EXPECT_TRUE(tileable({2, 8, 40, 64}));
  EXPECT_TRUE(tileable({1, 8, 40, 64}));
  EXPECT_TRUE(tileable({1, 1, 40, 64}));
  EXPECT_FALSE(tileable({2, 8, 1, 64}));  // query broadcast: a TMA box cannot repeat a row
  EXPECT_FALSE(tileable({2, 8, 40, 1}));  // key broadcast
  a.bias = tensor(30, DType::bf16, {2, 8, 40, 64});
  a.bias.stride[1] = 0;                   // expanded head dim (stride 0, size 8)
  EXPECT_FALSE(validate(a).bias_tileable);
  a = make_args({.sq = 40, .sk = 60});     // rows of 120 bytes: not whole 16-byte chunks
  EXPECT_FALSE(tileable({2, 8, 40, 60}));
}

TEST(Problem, RejectsBadWindow) {
  AttentionArgs a = make_args();
  a.window = Window{-2, 0};
  expect_invalid(a, "window.left");
  a.window = Window{0, -3};
  expect_invalid(a, "window.right");
}

TEST(Problem, RejectsBadSoftcapAndScale) {
  AttentionArgs a = make_args();
  for (float bad :
       {-1.0f, std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
    a.softcap = bad;
    expect_invalid(a, "softcap");
  }
  a.softcap = 0.0f;
  for (float bad : {0.0f, -0.5f, std::numeric_limits<float>::quiet_NaN(),
                    std::numeric_limits<float>::infinity()}) {
    a.scale = bad;
    expect_invalid(a, "scale");
  }
}

TEST(Problem, RejectsVarlenPointersWithoutVarlen) {
  AttentionArgs a = make_args();
  a.cu_seqlens_q = static_cast<const int32_t*>(fake_pointer(10));
  expect_invalid(a, "cu_seqlens_q");
  a = make_args();
  a.seqused_k = static_cast<const int32_t*>(fake_pointer(10));
  expect_invalid(a, "seqused_k");
  a = make_args();
  a.varlen = VarlenKind::padded;
  a.cu_seqlens_k = static_cast<const int32_t*>(fake_pointer(10));
  expect_invalid(a, "cu_seqlens_k");
  a = make_packed_args();
  a.seqused_q = static_cast<const int32_t*>(fake_pointer(12));
  expect_invalid(a, "seqused_q");
}

TEST(Problem, RejectsIncompletePackedVarlen) {
  AttentionArgs a = make_packed_args();
  a.cu_seqlens_k = nullptr;
  expect_invalid(a, "cu_seqlens_k");
  a = make_packed_args();
  a.cu_seqlens_q = nullptr;
  expect_invalid(a, "cu_seqlens_q");
  a = make_packed_args();
  a.batch = -1;
  expect_invalid(a, "batch");
  a = make_packed_args();
  a.max_seqlen_q = 0;
  expect_invalid(a, "max_seqlen_q");
  a = make_packed_args();
  a.max_seqlen_k = 121;
  expect_invalid(a, "max_seqlen_k");
  a = make_packed_args();
  a.v.shape[0] = 2;
  a.v.stride = test::permuted_strides(a.v.shape, {0, 1, 2, 3});
  expect_invalid(a, "v.shape[0]");
}

TEST(Problem, RejectsMisalignedLseAndSlopes) {
  AttentionArgs a = make_args();
  a.lse = reinterpret_cast<float*>(uintptr_t{0x100002});
  expect_invalid(a, "lse");
  a = make_args();
  a.alibi_slopes = reinterpret_cast<const float*>(uintptr_t{0x100001});
  expect_invalid(a, "alibi_slopes");
}

// ---- backward ---------------------------------------------------------------------------------

struct Backward {
  AttentionArgs args;
  BackwardArgs grads;
};

Backward make_backward(Dims s = {}) {
  Backward b;
  b.args = make_args(s);
  b.args.lse = static_cast<float*>(const_cast<void*>(fake_pointer(20)));
  b.grads.d_o = tensor(21, DType::bf16, {s.b, s.sq, s.hq, s.dv});
  b.grads.dq = tensor(22, DType::bf16, {s.b, s.sq, s.hq, s.d});
  b.grads.dk = tensor(23, DType::bf16, {s.b, s.sk, s.hkv, s.d});
  b.grads.dv = tensor(24, DType::bf16, {s.b, s.sk, s.hkv, s.dv});
  return b;
}

void expect_backward_invalid(const Backward& b, const std::string& argument) {
  try {
    validate_backward(b.args, b.grads);
    ADD_FAILURE() << "accepted; expected InvalidArgument(" << argument << ")";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(e.argument(), argument) << e.what();
  }
}

TEST(Problem, BackwardValidAcceptsMatchingGradients) {
  const Backward b = make_backward();
  const Problem p = validate_backward(b.args, b.grads);
  EXPECT_EQ(p.heads_kv, 2);
  EXPECT_FALSE(p.dbias);
}

TEST(Problem, BackwardRejectsMissingLse) {
  Backward b = make_backward();
  b.args.lse = nullptr;
  expect_backward_invalid(b, "lse");
}

TEST(Problem, BackwardRejectsMismatchedShapes) {
  Backward b = make_backward();
  b.grads.d_o.shape[1] += 1;
  expect_backward_invalid(b, "d_o.shape[1]");
  b = make_backward();
  b.grads.dq.shape[3] = 32;
  expect_backward_invalid(b, "dq.shape[3]");
  b = make_backward();
  b.grads.dk.shape[2] = 8;  // GQA: dk has the KV heads, not the query heads
  expect_backward_invalid(b, "dk.shape[2]");
  b = make_backward();
  b.grads.dv.shape[0] = 1;
  expect_backward_invalid(b, "dv.shape[0]");
}

TEST(Problem, BackwardRejectsBadGradientLayoutsAndTypes) {
  Backward b = make_backward();
  b.grads.dq.dtype = DType::f16;
  expect_backward_invalid(b, "dq.dtype");
  b = make_backward();
  b.grads.dk.data = nullptr;
  expect_backward_invalid(b, "dk.data");
  b = make_backward();
  b.grads.dv.stride[3] = 2;
  expect_backward_invalid(b, "dv.stride[3]");
  b = make_backward();
  b.grads.dq.stride[1] = 0;  // rows of a written gradient would overlap
  expect_backward_invalid(b, "dq.stride[1]");
}

TEST(Problem, BackwardDbiasNeedsABiasOfItsShape) {
  Backward b = make_backward();
  b.grads.dbias = tensor(25, DType::bf16, {2, 8, 33, 47});
  expect_backward_invalid(b, "dbias");
  b.args.bias = tensor(26, DType::bf16, {1, 8, 33, 47});
  expect_backward_invalid(b, "dbias.shape[0]");
  b.grads.dbias = tensor(25, DType::bf16, {1, 8, 33, 47});
  const Problem p = validate_backward(b.args, b.grads);
  EXPECT_TRUE(p.dbias);
  EXPECT_EQ(p.dbias_elements, 8 * 33 * 47);
}

TEST(Problem, RejectsDropoutOutsideZeroToOne) {
  for (float bad : {-0.1f, 1.0f, 1.5f, std::numeric_limits<float>::quiet_NaN(),
                    std::numeric_limits<float>::infinity()}) {
    AttentionArgs a = make_args();
    a.dropout_p = bad;
    expect_invalid(a, "dropout_p");
  }
  AttentionArgs a = make_args();
  a.dropout_p = 0.999f;
  EXPECT_TRUE(validate(a).dropout());
}

}  // namespace
}  // namespace jitattn
