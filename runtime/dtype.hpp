// Element types of longattn tensors and their host-side conversions.
// fp16 and bf16 are stored as raw 16-bit patterns; conversions round to nearest even.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

namespace longattn {

enum class DType : uint8_t { F64 = 0, F32 = 1, F16 = 2, BF16 = 3 };

struct Half {
  uint16_t bits = 0;
};
struct BFloat16 {
  uint16_t bits = 0;
};

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::F64: return 8;
    case DType::F32: return 4;
    default: return 2;
  }
}
const char* dtype_name(DType t);
// Parses "fp64|float64|f64", "fp32|float32|f32", "fp16|float16|f16|half", "bf16|bfloat16";
// throws InvalidArgument naming `arg` otherwise.
DType parse_dtype(const std::string& s, const std::string& arg = "dtype");

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// bf16 = upper 16 bits of fp32, rounded to nearest even; NaN stays NaN.
inline BFloat16 float_to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  BFloat16 r;
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    r.bits = static_cast<uint16_t>((u >> 16) | 0x40u);
    return r;
  }
  u += 0x7fffu + ((u >> 16) & 1u);
  r.bits = static_cast<uint16_t>(u >> 16);
  return r;
}
inline float bf16_to_float(BFloat16 h) { return bits_to_float(static_cast<uint32_t>(h.bits) << 16); }

Half float_to_half(float f);
float half_to_float(Half h);

// Rounds a value to what the dtype can hold (identity for fp64).
double round_to(DType t, double v);

}  // namespace longattn
