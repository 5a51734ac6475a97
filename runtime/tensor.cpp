// Host tensor storage, strided element access with dtype conversion, copies and comparisons.
#include "runtime/tensor.hpp"

#include <cmath>
#include <iomanip>
#include <limits>
#include <new>
#include <random>
#include <sstream>

#include "runtime/error.hpp"

namespace longattn {

TensorView TensorView::rows(int64_t n0, int64_t count, int64_t step) const {
  TensorView v = *this;
  v.data = static_cast<std::byte*>(data) + static_cast<int64_t>(dtype_size(dtype)) * n0 * sn;
  v.N = count;
  v.sn = sn * step;
  return v;
}
TensorView TensorView::heads(int64_t h0, int64_t count) const {
  TensorView v = *this;
  v.data = static_cast<std::byte*>(data) + static_cast<int64_t>(dtype_size(dtype)) * h0 * sh;
  v.H = count;
  return v;
}
TensorView TensorView::batches(int64_t b0, int64_t count) const {
  TensorView v = *this;
  v.data = static_cast<std::byte*>(data) + static_cast<int64_t>(dtype_size(dtype)) * b0 * sb;
  v.B = count;
  return v;
}
void check_have_memory(std::initializer_list<std::pair<const char*, TensorView>> views) {
  for (const auto& [name, t] : views)
    LONGATTN_CHECK_ARG(t.data != nullptr || t.numel() == 0, name, t.shape_string(),
                       "has no memory (its data pointer is null)");
}

std::string TensorView::shape_string() const {
  std::ostringstream os;
  os << "[" << B << ", " << N << ", " << H << ", " << D << "] " << dtype_name(dtype);
  return os.str();
}

TensorView make_view(void* data, DType dtype, int64_t B, int64_t N, int64_t H, int64_t D,
                     DeviceKind device) {
  TensorView v;
  v.data = data;
  v.dtype = dtype;
  v.device = device;
  v.B = B;
  v.N = N;
  v.H = H;
  v.D = D;
  v.sd = 1;
  v.sh = D;
  v.sn = H * D;
  v.sb = N * H * D;
  return v;
}

double load(const TensorView& v, int64_t b, int64_t n, int64_t h, int64_t d) {
  const int64_t i = v.offset(b, n, h, d);
  switch (v.dtype) {
    case DType::F64: return static_cast<const double*>(v.data)[i];
    case DType::F32: return static_cast<const float*>(v.data)[i];
    case DType::F16: return half_to_float(static_cast<const Half*>(v.data)[i]);
    case DType::BF16: return bf16_to_float(static_cast<const BFloat16*>(v.data)[i]);
  }
  return 0.0;
}

void store(const TensorView& v, int64_t b, int64_t n, int64_t h, int64_t d, double x) {
  const int64_t i = v.offset(b, n, h, d);
  switch (v.dtype) {
    case DType::F64: static_cast<double*>(v.data)[i] = x; break;
    case DType::F32: static_cast<float*>(v.data)[i] = static_cast<float>(x); break;
    case DType::F16: static_cast<Half*>(v.data)[i] = float_to_half(static_cast<float>(x)); break;
    case DType::BF16:
      static_cast<BFloat16*>(v.data)[i] = float_to_bf16(static_cast<float>(x));
      break;
  }
}

Tensor::Tensor(DType dtype, int64_t B, int64_t N, int64_t H, int64_t D) {
  LONGATTN_CHECK_ARG(B >= 0 && N >= 0 && H >= 0 && D >= 0, "shape",
                     std::to_string(B) + "x" + std::to_string(N) + "x" + std::to_string(H) +
                         "x" + std::to_string(D),
                     "dimensions must be non-negative");
  const std::string shape = std::to_string(B) + "x" + std::to_string(N) + "x" +
                            std::to_string(H) + "x" + std::to_string(D) + " " + dtype_name(dtype);
  // The bytes, without overflowing: a shape past what a size_t counts is an argument error,
  // one past the host's memory an OutOfMemory naming the tensor (not a bare std::bad_alloc).
  size_t bytes = dtype_size(dtype);
  for (int64_t d : {B, N, H, D}) {
    LONGATTN_CHECK_ARG(
        d == 0 || bytes <= std::numeric_limits<size_t>::max() / static_cast<size_t>(d), "shape",
        shape, "holds more bytes than a size_t counts");
    bytes *= static_cast<size_t>(d);
  }
  try {
    buf_.assign(bytes, std::byte{0});
  } catch (const std::bad_alloc&) {
    std::ostringstream os;
    os << "host memory exhausted (std::bad_alloc): a tensor of " << shape << " needs "
       << std::fixed << std::setprecision(2)
       << static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0) << " GiB";
    throw OutOfMemory(os.str(), bytes);
  }
  view_ = make_view(buf_.data(), dtype, B, N, H, D);
}

Tensor Tensor::randn(DType dtype, int64_t B, int64_t N, int64_t H, int64_t D, uint64_t seed,
                     double stddev) {
  Tensor t(dtype, B, N, H, D);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0.0, stddev);
  const TensorView v = t.view();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t d = 0; d < D; ++d) store(v, b, n, h, d, dist(rng));
  return t;
}

Tensor Tensor::to(DType dtype) const {
  Tensor t(dtype, view_.B, view_.N, view_.H, view_.D);
  copy_view(t.view(), view_);
  return t;
}

void Tensor::fill(double x) {
  for (int64_t b = 0; b < view_.B; ++b)
    for (int64_t n = 0; n < view_.N; ++n)
      for (int64_t h = 0; h < view_.H; ++h)
        for (int64_t d = 0; d < view_.D; ++d) store(view_, b, n, h, d, x);
}

void Tensor::copy_from(const TensorView& src) { copy_view(view_, src); }

void copy_view(const TensorView& dst, const TensorView& src) {
  LONGATTN_CHECK_ARG(dst.B == src.B && dst.N == src.N && dst.H == src.H && dst.D == src.D,
                     "dst shape", dst.shape_string(), "must equal src shape " + src.shape_string());
  for (int64_t b = 0; b < src.B; ++b)
    for (int64_t n = 0; n < src.N; ++n)
      for (int64_t h = 0; h < src.H; ++h)
        for (int64_t d = 0; d < src.D; ++d) store(dst, b, n, h, d, load(src, b, n, h, d));
}

ErrorStats compare(const TensorView& a, const TensorView& ref) {
  LONGATTN_CHECK_ARG(a.B == ref.B && a.N == ref.N && a.H == ref.H && a.D == ref.D, "shape",
                     a.shape_string(), "must equal reference shape " + ref.shape_string());
  ErrorStats s;
  double num = 0.0, den = 0.0;
  for (int64_t b = 0; b < a.B; ++b)
    for (int64_t n = 0; n < a.N; ++n)
      for (int64_t h = 0; h < a.H; ++h)
        for (int64_t d = 0; d < a.D; ++d) {
          const double x = load(a, b, n, h, d), y = load(ref, b, n, h, d);
          if (!std::isfinite(x) && !(std::isinf(x) && x == y)) s.finite = false;
          const double e = (std::isinf(x) && x == y) ? 0.0 : std::fabs(x - y);
          if (!(e <= s.max_abs)) s.max_abs = std::isnan(e) ? INFINITY : e;
          if (std::isfinite(y)) s.max_ref = std::max(s.max_ref, std::fabs(y));
          if (std::isfinite(e)) num += e * e;
          if (std::isfinite(y)) den += y * y;
        }
  s.rel_l2 = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  if (!s.finite) s.max_abs = INFINITY;
  return s;
}

}  // namespace longattn
