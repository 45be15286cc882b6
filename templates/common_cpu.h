// Host primitives shared by the CPU kernel templates: vector types, exact f16/bf16 <-> f32
// conversions, exp2/tanh/log. No #include at all: clang compiles the generated translation unit
// in-process with no standard headers on the include path, and libm calls would also keep the
// loops that use them from vectorising. Every function here is branch-free (selects, not jumps),
// so the loop vectoriser takes the scalar ones too.
//
// Needs IEEE semantics for infinities (masked scores are -inf): no -ffinite-math-only or
// -ffast-math. Denormal operands are never needed (DAZ/FTZ change no result computed here).

namespace jitattn_kernel {

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

// Lanes of the host's widest float vector, and how many vector accumulators a micro-kernel may
// keep live beside its operands (32 registers with AVX-512, 16 with AVX2 and SSE).
#if defined(__AVX512F__)
constexpr int kVecWidth = 16;
constexpr int kAccRegs = 16;
#elif defined(__AVX__)
constexpr int kVecWidth = 8;
constexpr int kAccRegs = 12;
#else
constexpr int kVecWidth = 4;
constexpr int kAccRegs = 12;
#endif

template <int N>
struct VecTypes {
  typedef float f __attribute__((ext_vector_type(N)));
  typedef int i __attribute__((ext_vector_type(N)));
};
template <int N>
using fvec = typename VecTypes<N>::f;
template <int N>
using ivec = typename VecTypes<N>::i;

// Unaligned vector load/store (one vmovups); memcpy keeps type-based aliasing out of it.
template <int N>
inline fvec<N> load_vec(const float* p) {
  fvec<N> v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
template <int N>
inline void store_vec(float* p, fvec<N> v) {
  __builtin_memcpy(p, &v, sizeof(v));
}

constexpr float kLog2e = 1.4426950408889634f;
constexpr double kLn2d = 0.6931471805599453;

inline float neg_inf() { return -__builtin_inff(); }

constexpr int min_i(int a, int b) { return a < b ? a : b; }
constexpr int max_i(int a, int b) { return a > b ? a : b; }
constexpr int pow2_floor(int x) { return x >= 16 ? 16 : x >= 8 ? 8 : x >= 4 ? 4 : x >= 2 ? 2 : 1; }

// ---- conversions (exact; round to nearest even on the way out) ---------------------------------
inline float bf16_to_float(u16 h) { return __builtin_bit_cast(float, static_cast<u32>(h) << 16); }

inline float f16_to_float(u16 h) {
  const u32 exp = h & 0x7c00u;
  const u32 em = static_cast<u32>(h & 0x7fffu) << 13;  // exponent and mantissa in f32 position
  const u32 normal = em + 0x38000000u;                   // exponent bias 15 -> 127
  const u32 special = em | 0x7f800000u;                  // inf, NaN (payload kept)
  // Subnormal: mantissa * 2^-24, exact in f32 (an integer conversion, no denormal operand).
  const u32 sub = __builtin_bit_cast(u32, static_cast<float>(static_cast<int>(h & 0x3ffu)) * 0x1p-24f);
  const u32 mag = exp == 0 ? sub : (exp == 0x7c00u ? special : normal);
  return __builtin_bit_cast(float, mag | (static_cast<u32>(h & 0x8000u) << 16));
}

inline u16 float_to_bf16(float f) {
  const u32 x = __builtin_bit_cast(u32, f);
  const u32 rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
  const u32 nan = (x >> 16) | 0x40u;  // quiet
  return static_cast<u16>((x & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

inline u16 float_to_f16(float f) {
  const u32 x = __builtin_bit_cast(u32, f);
  const u32 sign = (x >> 16) & 0x8000u;
  const u32 a = x & 0x7fffffffu;
  // Normal range (|f| >= 2^-14): rebias, round the 13 dropped bits to nearest even. A carry into
  // the exponent is the right answer; from 65520 up the result reaches 0x7c00 and is clamped there
  // (inf), which also covers f32 inf.
  const u32 r = a - 0x38000000u;
  u32 normal = (r + 0x0fffu + ((r >> 13) & 1u)) >> 13;
  normal = normal > 0x7c00u ? 0x7c00u : normal;
  // Subnormal range: the FPU rounds |f| + 0.5 to a multiple of 2^-24 (the f16 subnormal step),
  // to nearest even; the low bits of the sum are the f16 bits.
  const u32 sub = __builtin_bit_cast(u32, __builtin_bit_cast(float, a) + 0.5f) - 0x3f000000u;
  const u32 nan = 0x7e00u | ((a >> 13) & 0x3ffu);
  const u32 mag = a > 0x7f800000u ? nan : (a >= 0x38800000u ? normal : sub);
  return static_cast<u16>(sign | mag);
}

// ---- exp2 ----------------------------------------------------------------------------------------
// 2^x = 2^n * 2^f with n = round(x), f in [-0.5, 0.5]; 2^f by its Taylor polynomial of degree 7
// (truncation < 6e-9 relative). Inputs below -127 give exactly 0 (the exponent field of 2^n is
// 0), so a masked score (-inf) contributes nothing and never NaN. Callers pass x <= 0.
constexpr float kRoundMagic = 0x1.8p23f;  // x + 1.5*2^23 rounds x to an integer in the low bits
constexpr float kExp2C1 = 0.6931471805599453f;
constexpr float kExp2C2 = 0.2402265069591007f;
constexpr float kExp2C3 = 0.05550410866482158f;
constexpr float kExp2C4 = 0.009618129107628477f;
constexpr float kExp2C5 = 0.0013333558146428443f;
constexpr float kExp2C6 = 0.00015403530393381608f;
constexpr float kExp2C7 = 1.525273380405984e-05f;

template <int N>
inline fvec<N> exp2_vec(fvec<N> x) {
  x = __builtin_elementwise_max(x, static_cast<fvec<N>>(-127.0f));
  const fvec<N> t = x + kRoundMagic;
  const fvec<N> f = x - (t - kRoundMagic);
  const ivec<N> e = (__builtin_bit_cast(ivec<N>, t) - __builtin_bit_cast(int, kRoundMagic) + 127) << 23;
  fvec<N> y = kExp2C7;
  y = y * f + kExp2C6;
  y = y * f + kExp2C5;
  y = y * f + kExp2C4;
  y = y * f + kExp2C3;
  y = y * f + kExp2C2;
  y = y * f + kExp2C1;
  y = y * f + 1.0f;
  return y * __builtin_bit_cast(fvec<N>, e);
}

inline float exp2_scalar(float x) {
  x = x < -127.0f ? -127.0f : x;
  const float t = x + kRoundMagic;
  const float f = x - (t - kRoundMagic);
  const int e = (__builtin_bit_cast(int, t) - __builtin_bit_cast(int, kRoundMagic) + 127) << 23;
  float y = kExp2C7;
  y = y * f + kExp2C6;
  y = y * f + kExp2C5;
  y = y * f + kExp2C4;
  y = y * f + kExp2C3;
  y = y * f + kExp2C2;
  y = y * f + kExp2C1;
  y = y * f + 1.0f;
  return y * __builtin_bit_cast(float, e);
}

// tanh: (1 - e) / (1 + e) with e = exp(-2|x|) from |x| = 0.3 up (relative error < 3e-7);
// below, the odd Taylor series to x^13 (truncation < 1e-9), where 1 - e would cancel.
inline float tanh_scalar(float x) {
  const float a = __builtin_fabsf(x);
  const float e = exp2_scalar(a * (-2.0f * kLog2e));
  const float big = (1.0f - e) / (1.0f + e);
  const float a2 = a * a;
  float poly = 21844.0f / 6081075.0f;
  poly = poly * a2 - 1382.0f / 155925.0f;
  poly = poly * a2 + 62.0f / 2835.0f;
  poly = poly * a2 - 17.0f / 315.0f;
  poly = poly * a2 + 2.0f / 15.0f;
  poly = poly * a2 - 1.0f / 3.0f;
  const float small = a + a * a2 * poly;
  const float t = a < 0.3f ? small : big;
  return x < 0.0f ? -t : t;
}

// Natural log in double for the per-row LSE (scalar, once per row): x = m * 2^e with m in
// [sqrt(1/2), sqrt(2)), ln m = 2 atanh((m - 1) / (m + 1)) by its series (error < 1e-12).
inline double log_scalar(double x) {
  const u64 bits = __builtin_bit_cast(u64, x);
  int e = static_cast<int>((bits >> 52) & 0x7ffu) - 1023;
  double m = __builtin_bit_cast(double, (bits & 0x000fffffffffffffull) | 0x3ff0000000000000ull);
  if (m > 1.4142135623730951) {
    m *= 0.5;
    ++e;
  }
  const double t = (m - 1.0) / (m + 1.0);
  const double t2 = t * t;
  double s = 2.0 / 15.0;
  s = s * t2 + 2.0 / 13.0;
  s = s * t2 + 2.0 / 11.0;
  s = s * t2 + 2.0 / 9.0;
  s = s * t2 + 2.0 / 7.0;
  s = s * t2 + 2.0 / 5.0;
  s = s * t2 + 2.0 / 3.0;
  s = s * t2 + 2.0;
  return t * s + static_cast<double>(e) * kLn2d;
}

}  // namespace jitattn_kernel
