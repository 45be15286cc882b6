// Host-side number formats: exact f16/bf16 <-> f32 conversions, typed element access, and the
// error norms every numerical comparison (tests, `jitattn check`, the tuner's verify) uses.
#pragma once

#include <cstdint>
#include <span>

#include "jitattn/tensor.h"

namespace jitattn {

/// f32 -> bf16 bits, round to nearest even; NaN stays NaN (made quiet), +-inf stays inf.
uint16_t float_to_bf16_bits(float value);
/// bf16 bits -> f32 (exact).
float bf16_bits_to_float(uint16_t bits);
/// f32 -> IEEE binary16 bits, round to nearest even, with subnormals; overflow gives inf,
/// NaN stays NaN (made quiet, top payload bits kept).
uint16_t float_to_f16_bits(float value);
/// IEEE binary16 bits -> f32 (exact, subnormals included).
float f16_bits_to_float(uint16_t bits);

/// Element `index` (in elements, not bytes) of a host buffer of type `dtype`, exactly.
double load_as_double(const void* base, DType dtype, int64_t index);
/// Stores `value` rounded to `dtype` (nearest even) at element `index` of a host buffer.
void store_from_float(void* base, DType dtype, int64_t index, float value);

/// ||got - ref||_2 / ||ref||_2. Entries equal in both (including equal infinities, such as the
/// -inf LSE of fully masked rows) contribute nothing, and the norm of ref is taken over its
/// finite entries; a NaN anywhere, or an infinity in only one of the two, gives +inf. When ref's
/// norm is 0 the absolute norm ||got - ref||_2 is returned. Throws InvalidArgument when the
/// sizes differ.
double relative_error(std::span<const double> got, std::span<const double> ref);
/// max_i |got_i - ref_i| with the same conventions for NaN and infinities.
double max_abs_error(std::span<const double> got, std::span<const double> ref);

}  // namespace jitattn
