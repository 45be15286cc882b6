// DType names and parsing, TensorRef construction, host number conversions and error norms,
// and the test helpers' layouts (every other test relies on them).
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "jitattn/error.h"
#include "jitattn/tensor.h"
#include "runtime/numeric.h"
#include "tests/test_util.h"

namespace jitattn {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

TEST(Tensor, DTypeNamesRoundTrip) {
  for (DType t : {DType::f16, DType::bf16, DType::f32}) {
    EXPECT_EQ(parse_dtype(dtype_name(t)), t);
  }
  EXPECT_EQ(dtype_name(DType::bf16), "bf16");
  EXPECT_EQ(dtype_size(DType::f16), 2);
  EXPECT_EQ(dtype_size(DType::f32), 4);
}

TEST(Tensor, ParseDTypeAcceptsAliases) {
  for (const char* s : {"f16", "fp16", "half", "float16", "FP16"})
    EXPECT_EQ(parse_dtype(s), DType::f16) << s;
  for (const char* s : {"bf16", "bfloat16", "BF16"}) EXPECT_EQ(parse_dtype(s), DType::bf16) << s;
  for (const char* s : {"f32", "fp32", "float32"}) EXPECT_EQ(parse_dtype(s), DType::f32) << s;
}

TEST(Tensor, ParseDTypeRejectsUnknown) {
  for (const char* s : {"", "f8", "int8", "bf 16"}) {
    try {
      parse_dtype(s);
      ADD_FAILURE() << "accepted \"" << s << "\"";
    } catch (const InvalidArgument& e) {
      EXPECT_EQ(e.argument(), "dtype");
    }
  }
}

TEST(Tensor, ContiguousIsRowMajor) {
  int dummy = 0;
  const TensorRef t = TensorRef::contiguous(&dummy, DType::f16, {2, 3, 4, 5});
  EXPECT_EQ(t.data, &dummy);
  EXPECT_EQ(t.dtype, DType::f16);
  EXPECT_EQ(t.stride, (std::array<int64_t, 4>{60, 20, 5, 1}));
  EXPECT_FALSE(t.empty());
  EXPECT_TRUE(TensorRef{}.empty());
}

TEST(Tensor, Bf16RoundTripsEveryPattern) {
  for (uint32_t b = 0; b <= 0xffff; ++b) {
    const auto bits = static_cast<uint16_t>(b);
    const float f = bf16_bits_to_float(bits);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(bf16_bits_to_float(float_to_bf16_bits(f)))) << std::hex << b;
    } else {
      EXPECT_EQ(float_to_bf16_bits(f), bits) << std::hex << b;
    }
  }
}

TEST(Tensor, F16RoundTripsEveryPattern) {
  for (uint32_t b = 0; b <= 0xffff; ++b) {
    const auto bits = static_cast<uint16_t>(b);
    const float f = f16_bits_to_float(bits);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(f16_bits_to_float(float_to_f16_bits(f)))) << std::hex << b;
    } else {
      EXPECT_EQ(float_to_f16_bits(f), bits) << std::hex << b;
    }
  }
}

TEST(Tensor, F16DecodesKnownValues) {
  EXPECT_EQ(f16_bits_to_float(0x3c00), 1.0f);
  EXPECT_EQ(f16_bits_to_float(0xc000), -2.0f);
  EXPECT_EQ(f16_bits_to_float(0x7bff), 65504.0f);
  EXPECT_EQ(f16_bits_to_float(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_bits_to_float(0x0400), std::ldexp(1.0f, -14));
  EXPECT_EQ(f16_bits_to_float(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::signbit(f16_bits_to_float(0x8000)));
}

TEST(Tensor, F16RoundsToNearestEven) {
  EXPECT_EQ(float_to_f16_bits(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie -> even (down)
  EXPECT_EQ(float_to_f16_bits(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie -> even (up)
  EXPECT_EQ(float_to_f16_bits(65504.0f), 0x7bff);
  EXPECT_EQ(float_to_f16_bits(65519.0f), 0x7bff);
  EXPECT_EQ(float_to_f16_bits(65520.0f), 0x7c00);  // tie between 65504 and 2^16 -> inf
  EXPECT_EQ(float_to_f16_bits(-1e10f), 0xfc00);
  EXPECT_EQ(float_to_f16_bits(std::ldexp(1.0f, -25)), 0x0000);  // tie -> even (zero)
  EXPECT_EQ(float_to_f16_bits(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(float_to_f16_bits(std::ldexp(3.0f, -25)), 0x0002);  // tie -> even
  EXPECT_EQ(float_to_f16_bits(std::ldexp(1.0f, -14) - std::ldexp(1.0f, -26)), 0x0400);
  EXPECT_EQ(float_to_f16_bits(-0.0f), 0x8000);
  const uint16_t nan = float_to_f16_bits(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7c00, 0x7c00);
  EXPECT_NE(nan & 0x03ff, 0);
  // A signalling NaN whose payload sits only in the dropped bits must stay NaN.
  EXPECT_TRUE(std::isnan(f16_bits_to_float(float_to_f16_bits(std::bit_cast<float>(0x7f800001u)))));
}

#if defined(__FLT16_MAX__)
TEST(Tensor, F16MatchesCompilerConversionOnRandomFloats) {
  std::mt19937_64 rng = test::seeded_rng();
  std::uniform_int_distribution<uint32_t> bits;
  for (int n = 0; n < 2000000; ++n) {
    const float f = std::bit_cast<float>(bits(rng));
    if (std::isnan(f)) continue;
    const auto h = static_cast<_Float16>(f);
    uint16_t expected = 0;
    std::memcpy(&expected, &h, sizeof expected);
    ASSERT_EQ(float_to_f16_bits(f), expected) << std::hexfloat << f;
  }
}
#endif

TEST(Tensor, Bf16RoundsToNearestEven) {
  std::mt19937_64 rng = test::seeded_rng();
  std::uniform_int_distribution<uint32_t> bits;
  for (int n = 0; n < 1000000; ++n) {
    const uint32_t x = bits(rng);
    const float f = std::bit_cast<float>(x);
    if (!std::isfinite(f) || std::fabs(f) > 3.0e38f) continue;
    // The two candidates around f; the nearer wins, ties go to the even mantissa.
    const auto down = static_cast<uint16_t>(x >> 16);
    const auto up = static_cast<uint16_t>(down + 1);
    const double dd = std::fabs(double(f) - double(bf16_bits_to_float(down)));
    const double du = std::fabs(double(f) - double(bf16_bits_to_float(up)));
    const uint16_t expected = dd < du ? down : du < dd ? up : ((down & 1) == 0 ? down : up);
    ASSERT_EQ(float_to_bf16_bits(f), expected) << std::hexfloat << f;
  }
  EXPECT_EQ(float_to_bf16_bits(std::numeric_limits<float>::max()), 0x7f80);  // rounds to inf
  EXPECT_TRUE(
      std::isnan(bf16_bits_to_float(float_to_bf16_bits(std::bit_cast<float>(0x7f800001u)))));
}

TEST(Tensor, LoadAndStoreEveryDType) {
  alignas(16) unsigned char buffer[16] = {};
  for (DType t : {DType::f16, DType::bf16, DType::f32}) {
    store_from_float(buffer, t, 1, -1.5f);
    EXPECT_EQ(load_as_double(buffer, t, 1), -1.5);
    store_from_float(buffer, t, 2, 0.1f);
    EXPECT_NEAR(load_as_double(buffer, t, 2), 0.1, t == DType::bf16 ? 1e-3 : 1e-4);
  }
}

TEST(Tensor, ErrorNormsFollowConventions) {
  const std::vector<double> ref = {3.0, 4.0, -kInf};
  EXPECT_EQ(relative_error(ref, ref), 0.0);
  EXPECT_DOUBLE_EQ(relative_error(std::vector<double>{3.0, 5.0, -kInf}, ref), 1.0 / 5.0);
  EXPECT_DOUBLE_EQ(max_abs_error(std::vector<double>{3.0, 5.5, -kInf}, ref), 1.5);
  EXPECT_EQ(relative_error(std::vector<double>{3.0, 4.0, 0.0}, ref), kInf);
  EXPECT_EQ(relative_error(std::vector<double>{kNaN, 4.0, -kInf}, ref), kInf);
  EXPECT_EQ(max_abs_error(std::vector<double>{3.0, kNaN, -kInf}, ref), kInf);
  // A zero reference falls back to the absolute norm.
  EXPECT_DOUBLE_EQ(relative_error(std::vector<double>{3.0, 4.0}, std::vector<double>{0.0, 0.0}),
                   5.0);
  EXPECT_THROW(relative_error(std::vector<double>{1.0}, ref), InvalidArgument);
}

TEST(Tensor, RandomTensorLayoutsHoldTheSameLogicalValues) {
  std::mt19937_64 rng = test::seeded_rng();
  const std::array<int64_t, 4> shape = {2, 5, 3, 16};
  // {0,2,1,3}: physical [batch, heads, seq, dim].
  EXPECT_EQ(test::permuted_strides(shape, {0, 2, 1, 3}), (std::array<int64_t, 4>{240, 16, 80, 1}));
  EXPECT_EQ(test::permuted_strides(shape, {0, 1, 2, 3}, 8),
            (std::array<int64_t, 4>{360, 72, 24, 1}));
  for (std::array<int, 4> perm : {std::array<int, 4>{0, 1, 2, 3}, {0, 2, 1, 3}, {2, 1, 0, 3}}) {
    for (DType t : {DType::f16, DType::bf16, DType::f32}) {
      test::HostTensor a = test::random_tensor(t, shape, rng, -2.0f, 2.0f, perm, 8);
      EXPECT_EQ(reinterpret_cast<uintptr_t>(a.ref.data) % 16, 0u);
      const std::vector<double> values = test::to_double(a.ref);
      ASSERT_EQ(values.size(), 2u * 5 * 3 * 16);
      for (double x : values) {
        ASSERT_TRUE(x != 0.0 && x >= -2.0 && x <= 2.0) << x;
      }
      // Spot-check the strides: logical [1][4][2][7].
      const int64_t off = a.ref.stride[0] + 4 * a.ref.stride[1] + 2 * a.ref.stride[2] + 7;
      EXPECT_EQ(load_as_double(a.ref.data, t, off), values[((1 * 5 + 4) * 3 + 2) * 16 + 7]);
    }
  }
}

TEST(Tensor, PoisonedTensorIsNaN) {
  const test::HostTensor p = test::poisoned_tensor(DType::bf16, {1, 3, 2, 8});
  for (double x : test::to_double(p.ref)) EXPECT_TRUE(std::isnan(x));
  EXPECT_EQ(p.span_bytes, 3u * 2 * 8 * 2);
}

}  // namespace
}  // namespace jitattn
