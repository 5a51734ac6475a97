// Host conversions between fp32 and IEEE fp16, dtype names and parsing.
#include "runtime/dtype.hpp"

#include <cmath>

#include "runtime/error.hpp"

namespace longattn {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F64: return "fp64";
    case DType::F32: return "fp32";
    case DType::F16: return "fp16";
    case DType::BF16: return "bf16";
  }
  return "?";
}

DType parse_dtype(const std::string& s, const std::string& arg) {
  if (s == "fp64" || s == "float64" || s == "f64" || s == "double") return DType::F64;
  if (s == "fp32" || s == "float32" || s == "f32" || s == "float") return DType::F32;
  if (s == "fp16" || s == "float16" || s == "f16" || s == "half") return DType::F16;
  if (s == "bf16" || s == "bfloat16") return DType::BF16;
  throw InvalidArgument(arg, s, "must be one of fp64, fp32, fp16, bf16");
}

// fp32 -> fp16 with round to nearest even, overflow to inf, gradual underflow to subnormals.
Half float_to_half(float f) {
  uint32_t x = float_to_bits(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t mag = x & 0x7fffffffu;
  Half h;
  if (mag > 0x7f800000u) {  // NaN
    h.bits = static_cast<uint16_t>(sign | 0x7e00u);
    return h;
  }
  if (mag >= 0x477ff000u) {  // rounds to >= 65520 -> inf
    h.bits = static_cast<uint16_t>(sign | 0x7c00u);
    return h;
  }
  if (mag < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    // value = mag_float; half subnormal unit is 2^-24.
    float v = bits_to_float(mag);
    float scaled = v * 16777216.0f;  // v / 2^-24, exact in fp32 for this range
    uint32_t q = static_cast<uint32_t>(std::nearbyint(scaled));
    h.bits = static_cast<uint16_t>(sign | q);
    return h;
  }
  // normal: rebias exponent 127 -> 15 and round the 13 dropped mantissa bits to nearest even.
  uint32_t rounded = mag + 0xfffu + ((mag >> 13) & 1u);
  uint32_t r = (rounded >> 13) - ((127u - 15u) << 10);
  h.bits = static_cast<uint16_t>(sign | r);
  return h;
}

float half_to_float(Half h) {
  uint32_t sign = (static_cast<uint32_t>(h.bits) & 0x8000u) << 16;
  uint32_t exp = (h.bits >> 10) & 0x1fu;
  uint32_t man = h.bits & 0x3ffu;
  if (exp == 0) {
    float v = std::ldexp(static_cast<float>(man), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return bits_to_float(sign | 0x7f800000u | (man << 13));
  return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
}

double round_to(DType t, double v) {
  switch (t) {
    case DType::F64: return v;
    case DType::F32: return static_cast<float>(v);
    case DType::F16: return half_to_float(float_to_half(static_cast<float>(v)));
    case DType::BF16: return bf16_to_float(float_to_bf16(static_cast<float>(v)));
  }
  return v;
}

}  // namespace longattn
