// The CPU reference implementation of the kernel contract (kernels/contract.hpp): fp64
// accumulation, online softmax per query row, threads over (batch, head). Everything else in
// longattn is checked against this file.
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>
#include <unordered_map>

#include "kernels/backend.hpp"
#include "kernels/merge.hpp"
#include "runtime/error.hpp"
#include "runtime/parallel.hpp"

namespace longattn {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Loads rows [r0, r1) of head h, batch b of view t into a dense row-major [rows x D] buffer.
void load_rows(const TensorView& t, int64_t b, int64_t h, int64_t r0, int64_t r1, double* out) {
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t d = 0; d < t.D; ++d) out[(r - r0) * t.D + d] = load(t, b, r, h, d);
}

class CpuMask final : public PreparedMask {
 public:
  explicit CpuMask(const BlockMask& m) : mask_(m) {}
  BlockMaskView view() const override { return host_mask_view(mask_); }
  const BlockMask& host() const override { return mask_; }

 private:
  BlockMask mask_;
};

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads) : threads_(threads) {}
  DeviceKind device() const override { return DeviceKind::Cpu; }
  std::string name() const override { return "cpu"; }

  void* allocate(size_t bytes) override {
    void* p = std::malloc(bytes == 0 ? 1 : bytes);
    if (!p)
      throw OutOfMemory("host allocation of " + std::to_string(bytes) + " bytes failed (" +
                            std::to_string(current_) + " bytes already held by longattn)",
                        bytes);
    std::lock_guard<std::mutex> lock(mu_);
    sizes_[p] = bytes;
    current_ += bytes;
    peak_ = std::max(peak_, current_);
    return p;
  }
  void deallocate(void* p) override {
    if (!p) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = sizes_.find(p);
      if (it != sizes_.end()) {
        current_ -= it->second;
        sizes_.erase(it);
      }
    }
    std::free(p);
  }
  size_t peak_bytes() const override { return peak_; }
  void reset_peak() override { peak_ = current_; }
  std::unique_ptr<PreparedMask> prepare_mask(const BlockMask& m) override {
    return std::make_unique<CpuMask>(m);
  }

  void attention_forward(const AttnFwdParams& p) override {
    validate_forward(p);
    const int64_t B = p.q.B, H = p.q.H, D = p.q.D, Nq = p.q.N, Nk = p.k.N;
    const double scale = effective_scale(p.scale, D);
    const BlockMaskView& m = p.mask;
    parallel_for(B * H, threads_, [&](int64_t bh) {
      const int64_t b = bh / H, h = bh % H;
      std::vector<double> qb(m.block_q * D), kb(m.block_k * D), vb(m.block_k * D);
      std::vector<double> acc(m.block_q * D), mx(m.block_q), l(m.block_q);
      for (int64_t qblk = 0; qblk < m.num_q_blocks; ++qblk) {
        const int64_t q0 = qblk * m.block_q, q1 = std::min(Nq, q0 + m.block_q);
        load_rows(p.q, b, h, q0, q1, qb.data());
        std::fill(acc.begin(), acc.end(), 0.0);
        std::fill(mx.begin(), mx.end(), kNegInf);
        std::fill(l.begin(), l.end(), 0.0);
        for (int64_t e = m.row_ptr[qblk]; e < m.row_ptr[qblk + 1]; ++e) {
          const int64_t k0 = static_cast<int64_t>(m.col_idx[e]) * m.block_k;
          const int64_t k1 = std::min(Nk, k0 + m.block_k);
          load_rows(p.k, b, h, k0, k1, kb.data());
          load_rows(p.v, b, h, k0, k1, vb.data());
          for (int64_t i = q0; i < q1; ++i) {
            const double* qi = &qb[(i - q0) * D];
            double* ai = &acc[(i - q0) * D];
            double& mi = mx[i - q0];
            double& li = l[i - q0];
            for (int64_t j = k0; j < k1; ++j) {
              if (p.causal && p.k_offset + j > p.q_offset + i) continue;
              const double* kj = &kb[(j - k0) * D];
              double s = 0.0;
              for (int64_t d = 0; d < D; ++d) s += qi[d] * kj[d];
              s *= scale;
              if (s > mi) {  // new running max: rescale what was accumulated so far
                const double c = std::exp(mi - s);
                li *= c;
                for (int64_t d = 0; d < D; ++d) ai[d] *= c;
                mi = s;
              }
              const double pij = std::exp(s - mi);
              li += pij;
              const double* vj = &vb[(j - k0) * D];
              for (int64_t d = 0; d < D; ++d) ai[d] += pij * vj[d];
            }
          }
        }
        for (int64_t i = q0; i < q1; ++i) {
          const double li = l[i - q0];
          const bool empty = !(li > 0.0);
          for (int64_t d = 0; d < D; ++d)
            store(p.o, b, i, h, d, empty ? 0.0 : acc[(i - q0) * D + d] / li);
          store(p.lse, b, i, h, 0, empty ? kNegInf : mx[i - q0] + std::log(li));
        }
      }
      // Query rows in no listed block row cannot exist: num_q_blocks covers Nq by validation.
    });
  }

  void attention_backward(const AttnBwdParams& p) override {
    validate_backward(p);
    const int64_t B = p.q.B, H = p.q.H, D = p.q.D, Nq = p.q.N, Nk = p.k.N;
    const double scale = effective_scale(p.scale, D);
    const BlockMaskView& m = p.mask;
    parallel_for(B * H, threads_, [&](int64_t bh) {
      const int64_t b = bh / H, h = bh % H;
      std::vector<double> q(Nq * D), k(Nk * D), v(Nk * D), o(Nq * D), dout(Nq * D);
      std::vector<double> dq(Nq * D, 0.0), dk(Nk * D, 0.0), dv(Nk * D, 0.0), lse(Nq), delta(Nq);
      load_rows(p.q, b, h, 0, Nq, q.data());
      load_rows(p.k, b, h, 0, Nk, k.data());
      load_rows(p.v, b, h, 0, Nk, v.data());
      load_rows(p.o, b, h, 0, Nq, o.data());
      load_rows(p.d_o, b, h, 0, Nq, dout.data());
      for (int64_t i = 0; i < Nq; ++i) {
        lse[i] = load(p.lse, b, i, h, 0);
        if (p.delta.data) {
          delta[i] = load(p.delta, b, i, h, 0);
        } else {
          double s = 0.0;
          for (int64_t d = 0; d < D; ++d) s += dout[i * D + d] * o[i * D + d];
          delta[i] = s;
        }
      }
      for (int64_t qblk = 0; qblk < m.num_q_blocks; ++qblk) {
        const int64_t q0 = qblk * m.block_q, q1 = std::min(Nq, q0 + m.block_q);
        for (int64_t e = m.row_ptr[qblk]; e < m.row_ptr[qblk + 1]; ++e) {
          const int64_t k0 = static_cast<int64_t>(m.col_idx[e]) * m.block_k;
          const int64_t k1 = std::min(Nk, k0 + m.block_k);
          for (int64_t i = q0; i < q1; ++i) {
            if (lse[i] == kNegInf) continue;  // the row saw nothing globally
            const double* qi = &q[i * D];
            const double* doi = &dout[i * D];
            for (int64_t j = k0; j < k1; ++j) {
              if (p.causal && p.k_offset + j > p.q_offset + i) continue;
              const double* kj = &k[j * D];
              const double* vj = &v[j * D];
              double s = 0.0, dp = 0.0;
              for (int64_t d = 0; d < D; ++d) {
                s += qi[d] * kj[d];
                dp += doi[d] * vj[d];
              }
              const double pij = std::exp(s * scale - lse[i]);
              const double ds = pij * (dp - delta[i]) * scale;
              for (int64_t d = 0; d < D; ++d) {
                dq[i * D + d] += ds * kj[d];
                dk[j * D + d] += ds * qi[d];
                dv[j * D + d] += pij * doi[d];
              }
            }
          }
        }
      }
      // Added into the gradients, or (p.accumulate false) written over them.
      auto add_into = [&](const TensorView& t, const std::vector<double>& g, int64_t rows) {
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t d = 0; d < D; ++d)
            store(t, b, r, h, d, p.accumulate ? load(t, b, r, h, d) + g[r * D + d] : g[r * D + d]);
      };
      add_into(p.dq, dq, Nq);
      add_into(p.dk, dk, Nk);
      add_into(p.dv, dv, Nk);
    });
  }

  void merge(const TensorView& o_acc, const TensorView& lse_acc, const TensorView& o_part,
             const TensorView& lse_part) override {
    LONGATTN_CHECK_ARG(o_acc.B == o_part.B && o_acc.N == o_part.N && o_acc.H == o_part.H &&
                           o_acc.D == o_part.D,
                       "o_part", o_part.shape_string(), "must match o_acc " + o_acc.shape_string());
    parallel_for(o_acc.B * o_acc.N, threads_, [&](int64_t bn) {
      const int64_t b = bn / o_acc.N, n = bn % o_acc.N;
      for (int64_t h = 0; h < o_acc.H; ++h) {
        const auto w = merge_weights(load(lse_acc, b, n, h, 0), load(lse_part, b, n, h, 0));
        for (int64_t d = 0; d < o_acc.D; ++d)
          store(o_acc, b, n, h, d, w.w1 * load(o_acc, b, n, h, d) + w.w2 * load(o_part, b, n, h, d));
        store(lse_acc, b, n, h, 0, w.lse);
      }
    });
  }

  void fill(const TensorView& t, double value) override {
    each(t, [&](int64_t b, int64_t n, int64_t h, int64_t d) { store(t, b, n, h, d, value); });
  }
  void scale(const TensorView& t, double alpha) override {
    each(t, [&](int64_t b, int64_t n, int64_t h, int64_t d) {
      store(t, b, n, h, d, alpha * load(t, b, n, h, d));
    });
  }
  void axpy(const TensorView& dst, double alpha, const TensorView& src) override {
    check_same(dst, src);
    each(dst, [&](int64_t b, int64_t n, int64_t h, int64_t d) {
      store(dst, b, n, h, d, load(dst, b, n, h, d) + alpha * load(src, b, n, h, d));
    });
  }
  void copy(const TensorView& dst, const TensorView& src) override { copy_scaled(dst, 1.0, src); }
  void copy_scaled(const TensorView& dst, double alpha, const TensorView& src) override {
    check_same(dst, src);
    each(dst, [&](int64_t b, int64_t n, int64_t h, int64_t d) {
      store(dst, b, n, h, d, alpha * load(src, b, n, h, d));
    });
  }
  void gemm(bool ta, bool tb, double alpha, const MatrixView& a, const MatrixView& b,
            double beta, const MatrixView& c) override {
    const int64_t M = ta ? a.cols : a.rows, K = ta ? a.rows : a.cols;
    const int64_t Kb = tb ? b.cols : b.rows, N = tb ? b.rows : b.cols;
    LONGATTN_CHECK_ARG(K == Kb && c.rows == M && c.cols == N, "gemm shapes",
                       std::to_string(M) + "x" + std::to_string(K) + " * " + std::to_string(Kb) +
                           "x" + std::to_string(N) + " -> " + std::to_string(c.rows) + "x" +
                           std::to_string(c.cols),
                       "inner and outer dimensions must agree");
    auto at = [](const MatrixView& m, int64_t r, int64_t col) {
      return load(make_view(m.data, m.dtype, 1, 1, 1, 1), 0, 0, 0, r * m.ld + col);
    };
    parallel_for(M, threads_, [&](int64_t i) {
      for (int64_t j = 0; j < N; ++j) {
        double s = 0.0;
        for (int64_t k = 0; k < K; ++k)
          s += (ta ? at(a, k, i) : at(a, i, k)) * (tb ? at(b, j, k) : at(b, k, j));
        const TensorView cv = make_view(c.data, c.dtype, 1, 1, 1, 1);
        const double old = beta == 0.0 ? 0.0 : beta * load(cv, 0, 0, 0, i * c.ld + j);
        store(cv, 0, 0, 0, i * c.ld + j, alpha * s + old);
      }
    });
  }
  void upload(const TensorView& dst, const TensorView& src) override { copy(dst, src); }
  void download(const TensorView& dst, const TensorView& src) override { copy(dst, src); }

 private:
  static void check_same(const TensorView& a, const TensorView& b) {
    LONGATTN_CHECK_ARG(a.B == b.B && a.N == b.N && a.H == b.H && a.D == b.D, "src",
                       b.shape_string(), "must match dst " + a.shape_string());
  }
  template <typename F>
  void each(const TensorView& t, F&& f) {
    parallel_for(t.B * t.N, threads_, [&](int64_t bn) {
      const int64_t b = bn / t.N, n = bn % t.N;
      for (int64_t h = 0; h < t.H; ++h)
        for (int64_t d = 0; d < t.D; ++d) f(b, n, h, d);
    });
  }

  int threads_;
  std::mutex mu_;
  std::unordered_map<void*, size_t> sizes_;
  size_t current_ = 0, peak_ = 0;
};

}  // namespace

Backend::Backend() {
  static std::atomic<uint64_t> next_id{1};
  instance_id_ = next_id.fetch_add(1);
}

std::unique_ptr<Backend> make_cpu_backend(int num_threads) {
  return std::make_unique<CpuBackend>(num_threads);
}

DeviceTensor::DeviceTensor(Backend& be, DType dtype, int64_t B, int64_t N, int64_t H, int64_t D)
    : be_(&be) {
  void* p = be.allocate(static_cast<size_t>(B * N * H * D) * dtype_size(dtype));
  view_ = make_view(p, dtype, B, N, H, D, be.device());
}
DeviceTensor DeviceTensor::scratch(Backend& be, DType dtype, int64_t B, int64_t N, int64_t H,
                                   int64_t D) {
  DeviceTensor t;
  void* p = be.allocate_scratch(static_cast<size_t>(B * N * H * D) * dtype_size(dtype));
  t.be_ = &be;
  t.view_ = make_view(p, dtype, B, N, H, D, be.device());
  t.scratch_ = true;
  return t;
}
void DeviceTensor::release() noexcept {
  if (!be_ || !view_.data) return;
  try {
    if (scratch_)
      be_->release_scratch(view_.data);
    else
      be_->deallocate(view_.data);
  } catch (...) {
    // A destructor cannot report the asynchronous error a synchronisation found; the next
    // operation on the backend reports it.
  }
  view_.data = nullptr;
}
DeviceTensor::~DeviceTensor() { release(); }
DeviceTensor::DeviceTensor(DeviceTensor&& o) noexcept
    : be_(o.be_), view_(o.view_), scratch_(o.scratch_) {
  o.be_ = nullptr;
  o.view_.data = nullptr;
}
DeviceTensor& DeviceTensor::operator=(DeviceTensor&& o) noexcept {
  if (this != &o) {
    release();
    be_ = o.be_;
    view_ = o.view_;
    scratch_ = o.scratch_;
    o.be_ = nullptr;
    o.view_.data = nullptr;
  }
  return *this;
}

}  // namespace longattn
