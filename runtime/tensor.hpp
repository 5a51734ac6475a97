// Tensors of longattn: a non-owning strided view [B, N, H, D] and an owning host tensor.
// Strides are in elements. A dilated segment is a view with row stride r*H*D: no gather copies.
#pragma once
#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "runtime/dtype.hpp"

namespace longattn {

enum class DeviceKind : uint8_t { Cpu = 0, Cuda = 1 };

// A strided 4-D view over memory the caller owns. LSE tensors use the same view with D = 1.
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::F32;
  DeviceKind device = DeviceKind::Cpu;
  int64_t B = 0, N = 0, H = 0, D = 0;
  int64_t sb = 0, sn = 0, sh = 0, sd = 1;  // element strides

  int64_t numel() const { return B * N * H * D; }
  int64_t offset(int64_t b, int64_t n, int64_t h, int64_t d) const {
    return b * sb + n * sn + h * sh + d * sd;
  }
  bool is_contiguous() const { return sd == 1 && sh == D && sn == H * D && sb == N * H * D; }
  // Rows [n0, n0 + count*step) with stride `step`, i.e. a dilated or shifted row subset.
  TensorView rows(int64_t n0, int64_t count, int64_t step = 1) const;
  // Heads [h0, h0 + count).
  TensorView heads(int64_t h0, int64_t count) const;
  // Batches [b0, b0 + count).
  TensorView batches(int64_t b0, int64_t count) const;
  std::string shape_string() const;
};

// Throws InvalidArgument naming each view that has elements but no memory (data null: a
// default-constructed TensorView, or a tensor never allocated), before any kernel reads it.
void check_have_memory(std::initializer_list<std::pair<const char*, TensorView>> views);

// Contiguous strides for [B, N, H, D].
TensorView make_view(void* data, DType dtype, int64_t B, int64_t N, int64_t H, int64_t D,
                     DeviceKind device = DeviceKind::Cpu);

// Reads/writes one element of a host view as double (conversion on the CPU).
double load(const TensorView& v, int64_t b, int64_t n, int64_t h, int64_t d);
void store(const TensorView& v, int64_t b, int64_t n, int64_t h, int64_t d, double x);

// An owning host tensor, contiguous [B, N, H, D].
class Tensor {
 public:
  Tensor() = default;
  Tensor(DType dtype, int64_t B, int64_t N, int64_t H, int64_t D);
  static Tensor zeros(DType dtype, int64_t B, int64_t N, int64_t H, int64_t D) {
    return Tensor(dtype, B, N, H, D);
  }
  // Fresh normal(0, stddev) values from a seed, rounded to the dtype.
  static Tensor randn(DType dtype, int64_t B, int64_t N, int64_t H, int64_t D, uint64_t seed,
                      double stddev = 1.0);
  TensorView view() const { return view_; }
  DType dtype() const { return view_.dtype; }
  int64_t numel() const { return view_.numel(); }
  size_t bytes() const { return buf_.size(); }
  void* data() const { return view_.data; }
  std::array<int64_t, 4> shape() const { return {view_.B, view_.N, view_.H, view_.D}; }
  double at(int64_t b, int64_t n, int64_t h, int64_t d) const { return load(view_, b, n, h, d); }
  void set(int64_t b, int64_t n, int64_t h, int64_t d, double x) { store(view_, b, n, h, d, x); }
  Tensor to(DType dtype) const;  // converted copy
  Tensor clone() const { return to(dtype()); }
  void fill(double x);
  // Copies a strided host view's values (any dtype) into this tensor's layout.
  void copy_from(const TensorView& src);

 private:
  std::vector<std::byte> buf_;
  TensorView view_;
};

// Copies values between two host views of equal shape, converting dtypes.
void copy_view(const TensorView& dst, const TensorView& src);

// Max |a - b| and max |b| over all elements (host views of equal shape).
struct ErrorStats {
  double max_abs = 0.0;
  double max_ref = 0.0;
  double rel_l2 = 0.0;  // ||a-b|| / ||b||
  bool finite = true;
};
ErrorStats compare(const TensorView& a, const TensorView& ref);

}  // namespace longattn
