// Conversions are written with integer bit manipulation rather than compiler half types so that
// they round identically on every host compiler (GPU kernels use __float2half_rn / RNE too).
#include "runtime/numeric.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "jitattn/error.h"

namespace jitattn {

uint16_t float_to_bf16_bits(float value) {
  const uint32_t x = std::bit_cast<uint32_t>(value);
  if ((x & 0x7fffffffu) > 0x7f800000u) {
    // Truncating could clear every mantissa bit and turn NaN into inf; force the quiet bit.
    return static_cast<uint16_t>((x >> 16) | 0x0040u);
  }
  // Adding 0x7fff plus the lowest kept bit rounds half to even; a carry into the exponent is the
  // correct result (up to and including overflow to inf).
  const uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>((x + rounding) >> 16);
}

float bf16_bits_to_float(uint16_t bits) {
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}

uint16_t float_to_f16_bits(float value) {
  const uint32_t x = std::bit_cast<uint32_t>(value);
  const auto sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) {  // NaN: keep the top payload bits, force quiet so it stays NaN
    return static_cast<uint16_t>(sign | 0x7e00u | ((ax >> 13) & 0x03ffu));
  }
  // 65520 = 0x477ff000 is halfway between the largest half (65504) and 2^16: ties go to the even
  // candidate, which is inf.
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);
  if (ax < 0x38800000u) {
    // Below the smallest normal half (2^-14): the result is a multiple of 2^-24. Scaling by 2^24
    // is exact, and nearbyint rounds half to even in the default rounding mode. 1024 (= 2^-14)
    // is the correct encoding of the smallest normal.
    const float scaled = std::bit_cast<float>(ax) * 16777216.0f;
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(scaled)));
  }
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits to even; a
  // carry into the exponent is the correct result.
  const uint32_t rebased = ax - (112u << 23);
  const uint32_t rounding = 0x0fffu + ((rebased >> 13) & 1u);
  return static_cast<uint16_t>(sign | ((rebased + rounding) >> 13));
}

float f16_bits_to_float(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  const uint32_t mantissa = bits & 0x03ffu;
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24, exact in float.
    const float magnitude = static_cast<float>(mantissa) * (1.0f / 16777216.0f);
    return sign != 0 ? -magnitude : magnitude;
  }
  if (exponent == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  return std::bit_cast<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

double load_as_double(const void* base, DType dtype, int64_t index) {
  switch (dtype) {
    case DType::f16: return f16_bits_to_float(static_cast<const uint16_t*>(base)[index]);
    case DType::bf16: return bf16_bits_to_float(static_cast<const uint16_t*>(base)[index]);
    case DType::f32: return static_cast<const float*>(base)[index];
  }
  return std::numeric_limits<double>::quiet_NaN();
}

void store_from_float(void* base, DType dtype, int64_t index, float value) {
  switch (dtype) {
    case DType::f16: static_cast<uint16_t*>(base)[index] = float_to_f16_bits(value); return;
    case DType::bf16: static_cast<uint16_t*>(base)[index] = float_to_bf16_bits(value); return;
    case DType::f32: static_cast<float*>(base)[index] = value; return;
  }
}

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

void check_sizes(std::span<const double> got, std::span<const double> ref) {
  if (got.size() != ref.size()) {
    throw InvalidArgument("got", "must have as many entries as ref (" + std::to_string(ref.size()) +
                                     "), got " + std::to_string(got.size()));
  }
}

// |got - ref| under the shared conventions; +inf means "not comparable" (NaN or lone infinity).
double entry_error(double got, double ref) {
  if (std::isnan(got) || std::isnan(ref)) return kInf;
  if (got == ref) return 0.0;   // also equal infinities
  return std::fabs(got - ref);  // inf when exactly one is infinite
}

}  // namespace

double relative_error(std::span<const double> got, std::span<const double> ref) {
  check_sizes(got, ref);
  double diff2 = 0.0;
  double ref2 = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = entry_error(got[i], ref[i]);
    if (std::isinf(e)) return kInf;
    diff2 += e * e;
    if (std::isfinite(ref[i])) ref2 += ref[i] * ref[i];
  }
  const double diff = std::sqrt(diff2);
  return ref2 > 0.0 ? diff / std::sqrt(ref2) : diff;
}

double max_abs_error(std::span<const double> got, std::span<const double> ref) {
  check_sizes(got, ref);
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); ++i) worst = std::fmax(worst, entry_error(got[i], ref[i]));
  return worst;
}

}  // namespace jitattn
