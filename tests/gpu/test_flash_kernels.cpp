// The flash attention kernels (kernels/cuda/flash_attention.hpp) against the CPU reference
// backend on fresh random inputs: every dtype and head dim, ragged lengths, empty rows, extreme
// logits, causal with global offsets, strided and misaligned views, block-sparse masks of block
// 64 and 128, forward and backward (atomic and deterministic dQ). Skipped without a GPU.
//
// Tolerances: fp32 max error <= 2e-5 (1e-4 with extreme logits) times max(1, max |reference|);
// fp16/bf16 max error <= 2x that of a same-precision naive implementation (+1e-6), the naive
// forward from tests/common/reference.hpp and the naive backward below (scores, probabilities,
// dP, dS and results rounded to the dtype, fp64 sums).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/reference.hpp"
#include "common/scoped_env.hpp"
#include "kernels/backend.hpp"
#include "kernels/cuda/flash_attention.hpp"
#include "runtime/error.hpp"

namespace longattn {
namespace {

using testing::ScopedEnv;

bool has_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define SKIP_WITHOUT_GPU() \
  if (!has_gpu()) GTEST_SKIP() << "no CUDA device"

void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw Error(std::string(what) + ": " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
}

// A device allocation freed on scope exit.
struct DevMem {
  void* p = nullptr;
  explicit DevMem(size_t bytes) { ck(cudaMalloc(&p, std::max<size_t>(bytes, 16)), "cudaMalloc"); }
  ~DevMem() { cudaFree(p); }
  DevMem(const DevMem&) = delete;
  DevMem& operator=(const DevMem&) = delete;
};

enum class Layout { Contiguous, Dilated, Misaligned };

// A host buffer mirrored on the device, and one [B, N, H, D] view into both.
struct Mirrored {
  Tensor host;
  std::unique_ptr<DevMem> dev;
  TensorView hview, dview;

  void upload() const {
    ck(cudaMemcpy(dev->p, host.data(), host.bytes(), cudaMemcpyHostToDevice), "upload");
  }
  void download() {
    ck(cudaMemcpy(host.data(), dev->p, host.bytes(), cudaMemcpyDeviceToHost), "download");
  }
};

// Builds the buffer and view for a layout: Dilated = every second row from row 1 and heads
// [1, 1 + H) of a larger tensor (a dilated segment's view); Misaligned = rows of H*D + 3
// elements starting one element into the buffer (no 16-byte or pair alignment anywhere).
Mirrored make_mirrored(Layout layout, DType dt, int64_t B, int64_t N, int64_t H, int64_t D,
                       uint64_t seed, double stddev, bool poison = false) {
  Mirrored m;
  if (layout == Layout::Contiguous) {
    m.host = Tensor::randn(dt, B, N, H, D, seed, stddev);
    m.hview = m.host.view();
  } else if (layout == Layout::Dilated) {
    m.host = Tensor::randn(dt, B, 2 * N + 1, H + 1, D, seed, stddev);
    m.hview = m.host.view().rows(1, N, 2).heads(1, H);
  } else {
    const int64_t row = H * D + 3;
    m.host = Tensor::randn(dt, B, N + 1, 1, row, seed, stddev);
    TensorView v;
    v.dtype = dt;
    v.data = static_cast<char*>(m.host.data()) + dtype_size(dt);
    v.B = B;
    v.N = N;
    v.H = H;
    v.D = D;
    v.sb = (N + 1) * row;
    v.sn = row;
    v.sh = D;
    v.sd = 1;
    m.hview = v;
  }
  if (poison) std::memset(m.host.data(), 0xff, m.host.bytes());  // NaN in every float format
  m.dev = std::make_unique<DevMem>(m.host.bytes());
  m.dview = m.hview;
  m.dview.device = DeviceKind::Cuda;
  m.dview.data = static_cast<char*>(m.dev->p) +
                 (static_cast<char*>(m.hview.data) - static_cast<char*>(m.host.data()));
  m.upload();
  return m;
}

// fp64 contiguous copy of a view's values.
Tensor to_f64(const TensorView& v) {
  Tensor t(DType::F64, v.B, v.N, v.H, v.D);
  t.copy_from(v);
  return t;
}

// Elements of the whole buffer that are still NaN (the poison).
int64_t count_nan(const Tensor& t) {
  const TensorView all = make_view(t.data(), t.dtype(), 1, 1, 1, t.numel());
  int64_t n = 0;
  for (int64_t i = 0; i < t.numel(); ++i) n += std::isnan(load(all, 0, 0, 0, i)) ? 1 : 0;
  return n;
}

// A block mask and its transpose, on the host and the device.
struct MaskPair {
  BlockMask host, host_t;
  std::vector<std::unique_ptr<DevMem>> mem;
  BlockMaskView dev, dev_t;
};

BlockMaskView upload_mask(const BlockMask& m, std::vector<std::unique_ptr<DevMem>>& mem) {
  BlockMaskView v = host_mask_view(m);
  auto put = [&](const void* src, size_t bytes) {
    mem.push_back(std::make_unique<DevMem>(bytes));
    if (bytes) ck(cudaMemcpy(mem.back()->p, src, bytes, cudaMemcpyHostToDevice), "mask upload");
    return mem.back()->p;
  };
  v.row_ptr = static_cast<const int64_t*>(put(m.row_ptr.data(), m.row_ptr.size() * 8));
  v.col_idx = static_cast<const int32_t*>(put(m.col_idx.data(), m.col_idx.size() * 4));
  v.partial = static_cast<const uint8_t*>(put(m.partial.data(), m.partial.size()));
  return v;
}

enum class MaskKind { Dense, Sparse, Runs, Window, Window5, Window7 };

// Sparse: every third query block sees nothing, the others their diagonal block and a random
// half of the key blocks. Runs: every row one run of consecutive key blocks: every fourth row
// empty, every other a window of four blocks around the diagonal, the rest a random run.
// Window: every row the key blocks from 3 before to 2 after its diagonal block, so the rows of
// the transposed mask are runs as well (key blocks past the last window: empty rows). Window5,
// Window7: from 2 before to 2 after, from 3 before to 3 after (rows of 5 and 7 blocks but near
// the ends).
MaskPair make_mask(MaskKind kind, const MaskGeometry& g, uint64_t seed) {
  MaskPair mp;
  if (kind == MaskKind::Dense) {
    mp.host = dense_block_mask(g);
  } else if (kind == MaskKind::Window || kind == MaskKind::Window5 ||
             kind == MaskKind::Window7) {
    const int64_t before = kind == MaskKind::Window5 ? 2 : 3;
    const int64_t after = kind == MaskKind::Window ? 2 : before;
    const int64_t nqb = (g.nq + g.block_q - 1) / g.block_q;
    const int64_t nkb = (g.nk + g.block_k - 1) / g.block_k;
    std::vector<std::vector<int32_t>> rows(static_cast<size_t>(nqb));
    for (int64_t r = 0; r < nqb; ++r) {
      const int64_t d = std::min(nkb - 1, r * g.block_q / g.block_k);
      for (int64_t c = std::max<int64_t>(0, d - before); c <= std::min(nkb - 1, d + after); ++c)
        rows[r].push_back(static_cast<int32_t>(c));
    }
    mp.host = build_block_mask(g, rows);
  } else if (kind == MaskKind::Runs) {
    std::mt19937_64 rng(seed);
    const int64_t nqb = (g.nq + g.block_q - 1) / g.block_q;
    const int64_t nkb = (g.nk + g.block_k - 1) / g.block_k;
    std::vector<std::vector<int32_t>> rows(static_cast<size_t>(nqb));
    for (int64_t r = 0; r < nqb; ++r) {
      int64_t lo = 0, hi = -1;
      if (r % 4 == 2) continue;
      if (r % 2 == 0) {
        const int64_t d = std::min(nkb - 1, r * g.block_q / g.block_k);
        lo = std::max<int64_t>(0, d - 2);
        hi = std::min(nkb - 1, d + 1);
      } else {
        lo = static_cast<int64_t>(rng() % nkb);
        hi = lo + static_cast<int64_t>(rng() % (nkb - lo));
      }
      for (int64_t c = lo; c <= hi; ++c) rows[r].push_back(static_cast<int32_t>(c));
    }
    mp.host = build_block_mask(g, rows);
  } else {
    std::mt19937_64 rng(seed);
    const int64_t nqb = (g.nq + g.block_q - 1) / g.block_q;
    const int64_t nkb = (g.nk + g.block_k - 1) / g.block_k;
    std::vector<std::vector<int32_t>> rows(static_cast<size_t>(nqb));
    for (int64_t r = 0; r < nqb; ++r) {
      if (r % 3 == 1) continue;
      // The block holding the row's first position (visible under causality) and a random half.
      rows[r].push_back(static_cast<int32_t>(std::min(nkb - 1, r * g.block_q / g.block_k)));
      for (int64_t c = 0; c < nkb; ++c)
        if (rng() % 2 == 0) rows[r].push_back(static_cast<int32_t>(c));
    }
    mp.host = build_block_mask(g, rows);
  }
  mp.host_t = mp.host.transpose();
  mp.dev = upload_mask(mp.host, mp.mem);
  mp.dev_t = upload_mask(mp.host_t, mp.mem);
  return mp;
}

// One head of bf16 self-attention-shaped inputs on the device (nq queries, nk keys and values,
// o and lse poisoned): a forward call's parameters over any mask.
struct Bf16Call {
  Mirrored q, kv, o, lse;
  Bf16Call(int64_t nq, int64_t nk, int64_t D)
      : q(make_mirrored(Layout::Contiguous, DType::BF16, 1, nq, 1, D, 1, 1.0)),
        kv(make_mirrored(Layout::Contiguous, DType::BF16, 1, nk, 1, D, 2, 1.0)),
        o(make_mirrored(Layout::Contiguous, DType::BF16, 1, nq, 1, D, 0, 1.0, true)),
        lse(make_mirrored(Layout::Contiguous, DType::F32, 1, nq, 1, 1, 0, 1.0, true)) {}
  AttnFwdParams params(const BlockMaskView& mask) const {
    AttnFwdParams p;
    p.q = q.dview;
    p.k = p.v = kv.dview;
    p.o = o.dview;
    p.lse = lse.dview;
    p.mask = mask;
    return p;
  }
};

// The (i, j) pairs the mask and causality allow, for the naive references.
testing::Allowed allowed_of(const BlockMask& m, const MaskGeometry& g) {
  std::vector<char> blocks(static_cast<size_t>(m.num_q_blocks * m.num_k_blocks), 0);
  for (int64_t r = 0; r < m.num_q_blocks; ++r)
    for (int64_t e = m.row_ptr[r]; e < m.row_ptr[r + 1]; ++e)
      blocks[r * m.num_k_blocks + m.col_idx[e]] = 1;
  const int64_t nkb = m.num_k_blocks, bq = m.block_q, bk = m.block_k;
  return [blocks, nkb, bq, bk, g](int64_t, int64_t, int64_t i, int64_t j) {
    if (!blocks[(i / bq) * nkb + j / bk]) return false;
    return !g.causal || g.k_offset + j <= g.q_offset + i;
  };
}

// Naive backward in the precision `dt`: every intermediate rounded to dt, sums in fp64.
struct NaiveGrads {
  Tensor dq, dk, dv;
};
NaiveGrads naive_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                          const Tensor& dout, const Tensor& lse, const testing::Allowed& allowed,
                          double scale, DType dt) {
  const int64_t B = q.shape()[0], Nq = q.shape()[1], H = q.shape()[2], D = q.shape()[3];
  const int64_t Nk = k.shape()[1];
  auto r = [dt](double x) { return round_to(dt, x); };
  NaiveGrads g{Tensor(DType::F64, B, Nq, H, D), Tensor(DType::F64, B, Nk, H, D),
               Tensor(DType::F64, B, Nk, H, D)};
  std::vector<double> dq(Nq * D), dk(Nk * D), dv(Nk * D);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      std::fill(dq.begin(), dq.end(), 0.0);
      std::fill(dk.begin(), dk.end(), 0.0);
      std::fill(dv.begin(), dv.end(), 0.0);
      for (int64_t i = 0; i < Nq; ++i) {
        const double l = lse.at(b, i, h, 0);
        if (std::isinf(l)) continue;
        double delta = 0.0;
        for (int64_t d = 0; d < D; ++d) delta += dout.at(b, i, h, d) * o.at(b, i, h, d);
        delta = r(delta);
        for (int64_t j = 0; j < Nk; ++j) {
          if (!allowed(b, h, i, j)) continue;
          double s = 0.0, dp = 0.0;
          for (int64_t d = 0; d < D; ++d) {
            s += q.at(b, i, h, d) * k.at(b, j, h, d);
            dp += dout.at(b, i, h, d) * v.at(b, j, h, d);
          }
          const double p = r(std::exp(r(r(s) * scale) - l));
          const double ds = r(p * (r(dp) - delta));
          for (int64_t d = 0; d < D; ++d) {
            dq[i * D + d] += ds * k.at(b, j, h, d);
            dk[j * D + d] += ds * q.at(b, i, h, d);
            dv[j * D + d] += p * dout.at(b, i, h, d);
          }
        }
      }
      for (int64_t i = 0; i < Nq; ++i)
        for (int64_t d = 0; d < D; ++d) g.dq.set(b, i, h, d, r(scale * dq[i * D + d]));
      for (int64_t j = 0; j < Nk; ++j)
        for (int64_t d = 0; d < D; ++d) {
          g.dk.set(b, j, h, d, r(scale * dk[j * D + d]));
          g.dv.set(b, j, h, d, r(dv[j * D + d]));
        }
    }
  return g;
}

struct Case {
  DType dt;
  int64_t D;
  int64_t B, Nq, Nk, H;
  int64_t block_q, block_k;
  bool causal;
  int64_t q_offset, k_offset;
  MaskKind mask;
  Layout layout;
  double stddev;       // of q and k: large values give extreme logits
  bool deterministic;  // backward dQ pass without atomics
  std::string name;
  bool dq_misaligned = false;  // dq rows of H*D + 3 floats (no TMA on dq)
};

double fp32_bound(const Case& c, double max_ref) {
  return (c.stddev > 2.0 ? 1e-4 : testing::tolerance_for(DType::F32, 0.0)) *
         std::max(1.0, max_ref);
}

// Forward on the GPU vs the CPU reference (and the same-precision naive for fp16/bf16); returns
// the inputs and the reference for the backward check.
struct FwdRun {
  Mirrored q, k, v;
  MaskGeometry geo;
  MaskPair mask;
  Tensor q64, k64, v64, ref_o, ref_lse;
  Tensor o, lse;       // what the kernel wrote (fp64 copies)
  std::string kernel;  // what flash_forward_kernel said the call runs
  // The same-precision naive's errors (fp16/bf16): computed by run_forward unless set (>= 0) by
  // a caller that runs the same inputs (same case and seed) again.
  double naive_o = -1.0, naive_l = -1.0;
};

void run_forward(const Case& c, FwdRun& run, uint64_t seed) {
  run.q = make_mirrored(c.layout, c.dt, c.B, c.Nq, c.H, c.D, seed + 1, c.stddev);
  run.k = make_mirrored(c.layout, c.dt, c.B, c.Nk, c.H, c.D, seed + 2, c.stddev);
  run.v = make_mirrored(c.layout, c.dt, c.B, c.Nk, c.H, c.D, seed + 3, 1.0);
  run.geo = MaskGeometry{c.Nq, c.Nk, c.block_q, c.block_k, c.causal, c.q_offset, c.k_offset};
  run.mask = make_mask(c.mask, run.geo, seed + 4);
  Mirrored o = make_mirrored(c.layout, c.dt, c.B, c.Nq, c.H, c.D, 0, 1.0, true);
  const Layout lse_layout = c.layout == Layout::Contiguous ? Layout::Contiguous : Layout::Dilated;
  Mirrored lse = make_mirrored(lse_layout, DType::F32, c.B, c.Nq, c.H, 1, 0, 1.0, true);

  AttnFwdParams p;
  p.q = run.q.dview;
  p.k = run.k.dview;
  p.v = run.v.dview;
  p.o = o.dview;
  p.lse = lse.dview;
  p.mask = run.mask.dev;
  p.causal = c.causal;
  p.q_offset = c.q_offset;
  p.k_offset = c.k_offset;
  run.kernel = cuda::flash_forward_kernel(p);
  cuda::flash_forward(p, nullptr);
  ck(cudaDeviceSynchronize(), "flash_forward");
  o.download();
  lse.download();
  run.o = to_f64(o.hview);
  run.lse = to_f64(lse.hview);

  run.q64 = to_f64(run.q.hview);
  run.k64 = to_f64(run.k.hview);
  run.v64 = to_f64(run.v.hview);
  run.ref_o = Tensor(DType::F64, c.B, c.Nq, c.H, c.D);
  run.ref_lse = Tensor(DType::F64, c.B, c.Nq, c.H, 1);
  AttnFwdParams r = p;
  r.q = run.q64.view();
  r.k = run.k64.view();
  r.v = run.v64.view();
  r.o = run.ref_o.view();
  r.lse = run.ref_lse.view();
  r.mask = host_mask_view(run.mask.host);
  make_cpu_backend()->attention_forward(r);

  // Every element of the views was written, nothing outside them.
  EXPECT_EQ(count_nan(o.host), o.host.numel() - o.hview.numel()) << "o not fully written";
  EXPECT_EQ(count_nan(lse.host), lse.host.numel() - lse.hview.numel()) << "lse not fully written";

  const ErrorStats eo = compare(o.hview, run.ref_o.view());
  const ErrorStats el = compare(lse.hview, run.ref_lse.view());
  EXPECT_TRUE(eo.finite) << "o has non-finite values";
  EXPECT_TRUE(el.finite) << "lse differs in its -inf rows or has NaN";
  if (c.dt == DType::F32) {
    EXPECT_LE(eo.max_abs, fp32_bound(c, eo.max_ref)) << "o";
    EXPECT_LE(el.max_abs, fp32_bound(c, el.max_ref)) << "lse";
  } else {
    if (run.naive_o < 0) {
      const auto naive = testing::naive_attention(run.q64.view(), run.k64.view(), run.v64.view(),
                                                  allowed_of(run.mask.host, run.geo), 0.0, c.dt);
      run.naive_o = compare(naive.o.view(), run.ref_o.view()).max_abs;
      run.naive_l = compare(naive.lse.view(), run.ref_lse.view()).max_abs;
    }
    const double naive_o = run.naive_o, naive_l = run.naive_l;
    EXPECT_LE(eo.max_abs, testing::tolerance_for(c.dt, naive_o)) << "o, naive error " << naive_o;
    EXPECT_LE(el.max_abs, testing::tolerance_for(c.dt, naive_l)) << "lse, naive error " << naive_l;
    std::printf("[ fwd %s ] o err %.3g (naive %.3g), lse err %.3g (naive %.3g)\n", c.name.c_str(),
                eo.max_abs, naive_o, el.max_abs, naive_l);
  }
  if (c.dt == DType::F32)
    std::printf("[ fwd %s ] o err %.3g (max %.3g), lse err %.3g\n", c.name.c_str(), eo.max_abs,
                eo.max_ref, el.max_abs);
}

// One case's inputs (one seed) run again under other switches: the same-precision naive's
// errors, computed by the first run, serve the others.
struct SameInputs {
  uint64_t seed = std::random_device{}();
  double naive_o = -1.0, naive_l = -1.0;
};

void run_forward(const Case& c, FwdRun& run, SameInputs& in) {
  run.naive_o = in.naive_o;
  run.naive_l = in.naive_l;
  run_forward(c, run, in.seed);
  in.naive_o = run.naive_o;
  in.naive_l = run.naive_l;
}

class FlashCase : public ::testing::TestWithParam<Case> {};

TEST_P(FlashCase, ForwardMatchesCpuReference) {
  SKIP_WITHOUT_GPU();
  const Case c = GetParam();
  FwdRun run;
  run_forward(c, run, std::random_device{}());
}

// Whether this process's flash calls take the Hopper kernels where they accept the call: a
// build with them, an sm_90 device, and LONGATTN_FLASH_KERNELS not "portable".
bool hopper_kernels_run() {
#if LONGATTN_HAVE_SM90
  int dev = 0, major = 0, minor = 0;
  ck(cudaGetDevice(&dev), "cudaGetDevice");
  ck(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), "cc");
  ck(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev), "cc");
  const char* env = std::getenv("LONGATTN_FLASH_KERNELS");
  const bool portable_only = env != nullptr && std::string(env) == "portable";
  return major == 9 && minor == 0 && !portable_only;
#else
  return false;
#endif
}

// LONGATTN_SM90_QSPLIT for a run (0: the dispatch's choice).
std::string parts_value(int parts) { return parts > 0 ? std::to_string(parts) : std::string(); }

// The Hopper forward's two ways of storing o (whole 16-byte groups after a quad transpose, where
// o allows it; 4-byte pairs otherwise) write the same bits, both within the reference bound
// (run_forward), rows past Nq and the padding of strided views untouched.
TEST(FlashOVec, SameBitsAsPairStores) {
  SKIP_WITHOUT_GPU();
  const Case cases[] = {
      {DType::BF16, 128, 2, 1000, 1100, 2, 128, 128, false, 0, 0, MaskKind::Dense,
       Layout::Contiguous, 1.0, false, "bf16_d128_dense_ragged"},
      {DType::F16, 64, 1, 700, 900, 3, 128, 128, true, 0, 0, MaskKind::Dense,
       Layout::Contiguous, 1.0, false, "f16_d64_causal"},
      {DType::BF16, 128, 1, 900, 1000, 2, 128, 128, false, 0, 0, MaskKind::Runs,
       Layout::Contiguous, 1.0, false, "bf16_d128_runs"},
      {DType::BF16, 64, 1, 600, 700, 2, 128, 128, false, 0, 0, MaskKind::Sparse,
       Layout::Dilated, 1.0, false, "bf16_d64_sparse_dilated"}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const uint64_t seed = std::random_device{}();
    FwdRun pairs, groups;
    {
      const ScopedEnv off("LONGATTN_SM90_O_VEC", "0");
      run_forward(c, pairs, seed);
    }
    {
      const ScopedEnv on("LONGATTN_SM90_O_VEC", "1");
      run_forward(c, groups, seed);
    }
    EXPECT_EQ(compare(groups.o.view(), pairs.o.view()).max_abs, 0.0) << "o";
    EXPECT_EQ(compare(groups.lse.view(), pairs.lse.view()).max_abs, 0.0) << "lse";
  }
}

// The reference O and LSE (rounded to what the GPU would hold) feed both backwards.
// Backward on the GPU into fp32 accumulators holding earlier values vs the CPU reference (and
// the same-precision naive for fp16/bf16); with dkv_input_dtype dk and dv are of the input dtype
// and start at zero. kept: what the kernels left in dk and dv (all of both buffers, as fp64).
struct KeptGrads {
  Tensor dk, dv;
};
void check_backward(const Case& c, uint64_t seed, KeptGrads* kept = nullptr,
                    bool dkv_input_dtype = false) {
  FwdRun run;
  run_forward(c, run, seed);
  Mirrored o = make_mirrored(c.layout, c.dt, c.B, c.Nq, c.H, c.D, 0, 1.0);
  copy_view(o.hview, run.ref_o.view());  // rounded to the dtype, as a forward would store it
  o.upload();
  Mirrored lse = make_mirrored(Layout::Contiguous, DType::F32, c.B, c.Nq, c.H, 1, 0, 1.0);
  copy_view(lse.hview, run.ref_lse.view());
  lse.upload();
  Mirrored dout = make_mirrored(c.layout, c.dt, c.B, c.Nq, c.H, c.D, seed + 5, 1.0);
  // fp32 accumulators holding earlier values: the kernels must add, not overwrite.
  Mirrored dq = make_mirrored(c.dq_misaligned ? Layout::Misaligned : c.layout, DType::F32, c.B,
                              c.Nq, c.H, c.D, seed + 6, 1.0);
  const DType dkv_dt = dkv_input_dtype ? c.dt : DType::F32;
  Mirrored dk = make_mirrored(c.layout, dkv_dt, c.B, c.Nk, c.H, c.D, seed + 7, 1.0);
  Mirrored dv = make_mirrored(c.layout, dkv_dt, c.B, c.Nk, c.H, c.D, seed + 8, 1.0);
  if (dkv_input_dtype) {
    for (Mirrored* m : {&dk, &dv}) {
      std::memset(m->host.data(), 0, m->host.bytes());
      m->upload();
    }
  }
  const Tensor dq0 = to_f64(dq.hview), dk0 = to_f64(dk.hview), dv0 = to_f64(dv.hview);

  AttnBwdParams p;
  p.q = run.q.dview;
  p.k = run.k.dview;
  p.v = run.v.dview;
  p.o = o.dview;
  p.d_o = dout.dview;
  p.lse = lse.dview;
  p.dq = dq.dview;
  p.dk = dk.dview;
  p.dv = dv.dview;
  p.mask = run.mask.dev;
  p.mask_t = run.mask.dev_t;
  p.causal = c.causal;
  p.q_offset = c.q_offset;
  p.k_offset = c.k_offset;
  p.deterministic = c.deterministic;
  cuda::flash_backward(p, nullptr);
  ck(cudaDeviceSynchronize(), "flash_backward");
  dq.download();
  dk.download();
  dv.download();
  if (kept != nullptr) {
    kept->dk = to_f64(dk.host.view());
    kept->dv = to_f64(dv.host.view());
  }

  const Tensor o64 = to_f64(o.hview), lse64 = to_f64(lse.hview), do64 = to_f64(dout.hview);
  Tensor rdq(DType::F64, c.B, c.Nq, c.H, c.D), rdk(DType::F64, c.B, c.Nk, c.H, c.D),
      rdv(DType::F64, c.B, c.Nk, c.H, c.D);
  AttnBwdParams r = p;
  r.q = run.q64.view();
  r.k = run.k64.view();
  r.v = run.v64.view();
  r.o = o64.view();
  r.d_o = do64.view();
  r.lse = lse64.view();
  r.dq = rdq.view();
  r.dk = rdk.view();
  r.dv = rdv.view();
  r.mask = host_mask_view(run.mask.host);
  r.mask_t = host_mask_view(run.mask.host_t);
  make_cpu_backend()->attention_backward(r);

  // What the kernels added: result minus the initial accumulator.
  auto added = [](const TensorView& after, const Tensor& before) {
    Tensor t = to_f64(after);
    for (int64_t i = 0; i < t.numel(); ++i)
      static_cast<double*>(t.data())[i] -= static_cast<const double*>(before.data())[i];
    return t;
  };
  const Tensor gq = added(dq.hview, dq0), gk = added(dk.hview, dk0), gv = added(dv.hview, dv0);
  const ErrorStats eq = compare(gq.view(), rdq.view()), ek = compare(gk.view(), rdk.view()),
                   ev = compare(gv.view(), rdv.view());
  EXPECT_TRUE(eq.finite && ek.finite && ev.finite) << "non-finite gradients";
  if (c.dt == DType::F32) {
    EXPECT_LE(eq.max_abs, fp32_bound(c, eq.max_ref)) << "dq";
    EXPECT_LE(ek.max_abs, fp32_bound(c, ek.max_ref)) << "dk";
    EXPECT_LE(ev.max_abs, fp32_bound(c, ev.max_ref)) << "dv";
    std::printf("[ bwd %s ] dq %.3g dk %.3g dv %.3g (max %.3g %.3g %.3g)\n", c.name.c_str(),
                eq.max_abs, ek.max_abs, ev.max_abs, eq.max_ref, ek.max_ref, ev.max_ref);
  } else {
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
    const NaiveGrads ng = naive_backward(run.q64, run.k64, run.v64, o64, do64, lse64,
                                         allowed_of(run.mask.host, run.geo), scale, c.dt);
    const double nq = compare(ng.dq.view(), rdq.view()).max_abs;
    const double nk = compare(ng.dk.view(), rdk.view()).max_abs;
    const double nv = compare(ng.dv.view(), rdv.view()).max_abs;
    EXPECT_LE(eq.max_abs, testing::tolerance_for(c.dt, nq)) << "dq, naive error " << nq;
    EXPECT_LE(ek.max_abs, testing::tolerance_for(c.dt, nk)) << "dk, naive error " << nk;
    EXPECT_LE(ev.max_abs, testing::tolerance_for(c.dt, nv)) << "dv, naive error " << nv;
    std::printf("[ bwd %s ] dq %.3g (naive %.3g) dk %.3g (naive %.3g) dv %.3g (naive %.3g)\n",
                c.name.c_str(), eq.max_abs, nq, ek.max_abs, nk, ev.max_abs, nv);
  }
}

TEST_P(FlashCase, BackwardMatchesCpuReference) {
  SKIP_WITHOUT_GPU();
  check_backward(GetParam(), std::random_device{}());
}

std::vector<Case> all_cases() {
  std::vector<Case> cs;
  for (DType dt : {DType::F32, DType::F16, DType::BF16})
    for (int64_t D : {32, 64, 128, 256}) {
      const int64_t n = D == 256 ? 130 : 200;
      const std::string tag = std::string(dtype_name(dt)) + "_d" + std::to_string(D);
      // Dense, ragged (not a multiple of 64), batch 2.
      cs.push_back({dt, D, 2, n, n + 7, 2, 64, 64, false, 0, 0, MaskKind::Dense,
                    Layout::Contiguous, 1.0, false, tag + "_dense"});
      // Causal ring-style chunk (queries after keys) on dilated views, 128-blocks.
      cs.push_back({dt, D, 1, n - 50, n + 20, 2, 128, 128, true, 70, 0, MaskKind::Dense,
                    Layout::Dilated, 1.0, false, tag + "_causal_dilated_b128"});
      // Block-sparse with empty rows, mixed block sizes, misaligned views (scalar paths).
      cs.push_back({dt, D, 1, n + 100, n + 61, 3, 64, 128, false, 0, 0, MaskKind::Sparse,
                    Layout::Misaligned, 1.0, false, tag + "_sparse_misaligned"});
      // Extreme logits; keys start after the first queries, so the first 40 rows see nothing.
      cs.push_back({dt, D, 1, n - 70, n - 70, 2, 64, 64, true, 0, 40, MaskKind::Dense,
                    Layout::Contiguous, 5.0, true, tag + "_extreme_empty_rows"});
      // Causal block-sparse, 128-row query blocks over 64-key blocks.
      cs.push_back({dt, D, 1, 2 * n + 30, 2 * n + 30, 2, 128, 64, true, 0, 0, MaskKind::Sparse,
                    Layout::Contiguous, 1.0, false, tag + "_causal_sparse_b128x64"});
      // 128-blocks over many key tiles (the Hopper kernel's stage ring wraps several times):
      // dense ragged batch 2 with more keys than queries, and causal block-sparse with empty
      // rows on dilated views with extreme logits (256-row query blocks over 128-key blocks).
      if (D == 64 || D == 128) {
        cs.push_back({dt, D, 2, 1100, 1250, 2, 128, 128, false, 0, 0, MaskKind::Dense,
                      Layout::Contiguous, 1.0, false, tag + "_dense_b128_long"});
        cs.push_back({dt, D, 1, 1000, 1000, 2, 256, 128, true, 0, 0, MaskKind::Sparse,
                      Layout::Dilated, 5.0, false, tag + "_causal_sparse_b256x128_long"});
        // dq whose rows TMA cannot address: the Hopper backward adds dQ from registers.
        cs.push_back({dt, D, 1, 600, 700, 2, 128, 128, true, 100, 0, MaskKind::Dense,
                      Layout::Contiguous, 1.0, false, tag + "_dense_b128_dq_misaligned", true});
      }
    }
  return cs;
}

INSTANTIATE_TEST_SUITE_P(Kernels, FlashCase, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

// The Hopper forward's larger tiles, which it takes when the mask lists every key block the call
// can see: at head dim 64 192-row query tiles (three consumer warpgroups), with sequence ends
// inside a tile and a key tile, causal with and without a query offset, query blocks of 256,
// fewer queries than one tile, strided views; at head dim 128 192-key tiles, with key ends
// inside a tile and at one, one short tile, strided views, large logits, causal with and without
// a query offset. Then the same
// with LONGATTN_SM90_FWD_WIDE=0 (128 x 128 tiles). Elsewhere the portable kernels run the same
// checks.
TEST(FlashWide, CompleteMasksMatchReference) {
  SKIP_WITHOUT_GPU();
  for (const char* wide : {"1", "0"}) {
    setenv("LONGATTN_SM90_FWD_WIDE", wide, 1);
    for (DType dt : {DType::BF16, DType::F16}) {
      const std::string tag = std::string(dtype_name(dt)) + "_wide" + wide;
      const std::vector<Case> cs = {
          {dt, 64, 2, 1000, 900, 2, 128, 128, false, 0, 0, MaskKind::Dense, Layout::Contiguous,
           1.0, false, tag + "_edges"},
          {dt, 64, 1, 700, 700, 2, 128, 128, true, 0, 0, MaskKind::Dense, Layout::Dilated, 1.0,
           false, tag + "_causal"},
          {dt, 64, 1, 400, 700, 2, 128, 128, true, 300, 0, MaskKind::Dense, Layout::Contiguous,
           1.0, false, tag + "_causal_offset"},
          {dt, 64, 1, 1100, 1100, 1, 256, 128, true, 0, 0, MaskKind::Dense, Layout::Contiguous,
           3.0, false, tag + "_causal_b256x128"},
          {dt, 64, 2, 100, 300, 3, 128, 128, false, 0, 0, MaskKind::Dense, Layout::Contiguous, 1.0,
           false, tag + "_short"},
          {dt, 128, 2, 1000, 900, 2, 128, 128, false, 0, 0, MaskKind::Dense, Layout::Contiguous,
           1.0, false, tag + "_d128_edges"},
          {dt, 128, 1, 300, 100, 2, 128, 128, false, 0, 0, MaskKind::Dense, Layout::Dilated, 1.0,
           false, tag + "_d128_short_keys"},
          {dt, 128, 1, 500, 768, 2, 128, 128, true, 0, 0, MaskKind::Dense, Layout::Contiguous,
           1.0, false, tag + "_d128_causal_whole_key_tiles"},
          {dt, 128, 1, 500, 1100, 1, 256, 256, false, 0, 0, MaskKind::Dense, Layout::Contiguous,
           3.0, false, tag + "_d128_b256_large"},
          {dt, 128, 1, 900, 900, 2, 128, 128, true, 0, 0, MaskKind::Dense, Layout::Contiguous, 1.0,
           false, tag + "_d128_causal"},
          {dt, 128, 1, 400, 1000, 1, 128, 128, true, 600, 0, MaskKind::Dense, Layout::Dilated, 1.0,
           false, tag + "_d128_causal_offset"}};
      for (const Case& c : cs) {
        FwdRun run;
        run_forward(c, run, std::random_device{}());
      }
    }
  }
  unsetenv("LONGATTN_SM90_FWD_WIDE");
}

// The Hopper backward's two ways of adding into dk and dv (whole 8-column groups after a quad
// transpose, where both allow 16-byte accesses; pairs otherwise) leave the same bits, both within
// the reference bound (check_backward), into fp32 accumulators and into dk, dv of the input
// dtype, with key rows past Nk, strided views and query parts. (The TMA reduces are off here:
// they replace both ways, and with query parts they add in any order.)
TEST(FlashDkvVec, SameBitsAsPairs) {
  SKIP_WITHOUT_GPU();
  const ScopedEnv no_reduces("LONGATTN_SM90_DKV_TMA", "0");
  struct Run {
    bool input_dtype;  // dk, dv of the input dtype (else fp32 accumulators)
    int parts;         // LONGATTN_SM90_QSPLIT (0: the dispatch's choice)
    Case c;
  };
  const Run runs[] = {
      {false, 0, {DType::BF16, 128, 2, 1100, 1250, 2, 128, 128, false, 0, 0, MaskKind::Dense,
                  Layout::Contiguous, 1.0, false, "bf16_d128_dense_ragged_f32acc"}},
      {false, 0, {DType::F16, 64, 1, 700, 900, 3, 128, 128, true, 0, 0, MaskKind::Dense,
                  Layout::Dilated, 1.0, false, "f16_d64_causal_dilated_f32acc"}},
      {true, 0, {DType::BF16, 128, 1, 900, 1000, 2, 256, 128, true, 0, 0, MaskKind::Sparse,
                 Layout::Contiguous, 1.0, false, "bf16_d128_causal_sparse_bf16"}},
      {true, 0, {DType::F16, 64, 2, 600, 650, 2, 128, 128, false, 0, 0, MaskKind::Sparse,
                 Layout::Dilated, 1.0, false, "f16_d64_sparse_dilated_f16"}},
      {false, 3, {DType::F16, 128, 1, 1000, 1000, 2, 128, 128, false, 0, 0, MaskKind::Dense,
                  Layout::Contiguous, 1.0, false, "f16_d128_parts3_f32acc"}}};
  for (const Run& r : runs) {
    SCOPED_TRACE(r.c.name);
    const ScopedEnv split("LONGATTN_SM90_QSPLIT", parts_value(r.parts));
    const uint64_t seed = std::random_device{}();
    KeptGrads pairs, groups;
    {
      const ScopedEnv off("LONGATTN_SM90_DKV_VEC", "0");
      check_backward(r.c, seed, &pairs, r.input_dtype);
    }
    {
      const ScopedEnv on("LONGATTN_SM90_DKV_VEC", "1");
      check_backward(r.c, seed, &groups, r.input_dtype);
    }
    EXPECT_EQ(compare(groups.dk.view(), pairs.dk.view()).max_abs, 0.0) << "dk";
    EXPECT_EQ(compare(groups.dv.view(), pairs.dv.view()).max_abs, 0.0) << "dv";
  }
}

// The persistent Hopper forward with a grid of 3 CTAs: every CTA walks many (tile, head, batch)
// items, so the item handoff, the Q reload, the per-tile info and the stage rings carried across
// items are exercised (the cases above fit one item per CTA on a full GPU); elsewhere the same
// checks run through the portable kernels.
struct GridLimit {
  GridLimit(int n, int group) { cuda::set_persistent_grid_limit(n, group); }
  ~GridLimit() { cuda::set_persistent_grid_limit(0, 0); }
};
// The forward cases make(dtype, tag) returns, in bf16 and fp16, on one CTA per item and on a grid
// of 3 CTAs (tag: "<dtype>_grid<n>"), each against the reference (run_forward), then check(run).
template <typename Make, typename Check>
void forward_on_grids(Make make, Check check) {
  for (int grid : {0, 3}) {
    const GridLimit limit(grid, 2);
    for (DType dt : {DType::BF16, DType::F16}) {
      const std::string tag = std::string(dtype_name(dt)) + "_grid" + std::to_string(grid);
      for (const Case& c : make(dt, tag)) {
        SCOPED_TRACE(c.name);
        FwdRun run;
        run_forward(c, run, std::random_device{}());
        check(run);
      }
    }
  }
}
TEST(FlashPersistent, ManyItemsPerCta) {
  SKIP_WITHOUT_GPU();
  // Head groups of 4 over 6 or 9 (batch, head) pairs: the last group is partial.
  const GridLimit limit(3, 4);
  for (DType dt : {DType::BF16, DType::F16})
    for (int64_t D : {64, 128}) {
      const std::string tag = std::string(dtype_name(dt)) + "_d" + std::to_string(D);
      // Dense ragged, 3 batches x 3 heads x 6 query tiles; causal block-sparse with empty
      // rows (some items see no key tile) on dilated views.
      const Case cs[] = {
          {dt, D, 3, 700, 650, 3, 128, 128, true, 0, 0, MaskKind::Dense, Layout::Contiguous,
           1.0, false, tag + "_persistent_dense_causal"},
          {dt, D, 2, 900, 900, 3, 256, 128, true, 0, 0, MaskKind::Sparse, Layout::Dilated,
           3.0, false, tag + "_persistent_sparse"}};
      for (const Case& c : cs) {
        FwdRun run;
        run_forward(c, run, std::random_device{}());
      }
    }
}

// Tail splitting of the Hopper forward (non-causal calls over complete masks): the items of the
// last, partial wave are cut along the keys into pieces and merged after the kernel. On a full
// GPU small calls are all tail (fewer items than CTAs); with a grid of 5 CTAs the split items
// follow whole ones in the same CTAs. Sequence ends inside a query tile and a key tile, batches
// and heads, strided views; each case against the reference with the split taken
// (forward_last_split_pieces > 0 on sm90) and with LONGATTN_SM90_FWD_TAIL=0 (none taken).
// Elsewhere the portable kernels run the same checks. Short items are off here: where they beat
// the split (d=64 calls on 5 CTAs) the launch takes them instead (FlashShortItems).
TEST(FlashTailSplit, PiecesMergeToReference) {
  SKIP_WITHOUT_GPU();
  const ScopedEnv no_shorts("LONGATTN_SM90_FWD_SHORT", "0");
  int dev = 0, sms = 0;
  ASSERT_EQ(cudaGetDevice(&dev), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), cudaSuccess);
  int split_cases = 0, hopper_cases = 0;
  for (int limit : {0, 5}) {
    const GridLimit grid(limit, 0);
    for (DType dt : {DType::BF16, DType::F16})
      for (int64_t D : {64, 128}) {
        const std::string tag = std::string(dtype_name(dt)) + "_d" + std::to_string(D) +
                                "_grid" + std::to_string(limit);
        const Case cs[] = {
            {dt, D, 2, 500, 900, 2, 128, 128, false, 0, 0, MaskKind::Dense, Layout::Contiguous,
             1.0, false, tag + "_edges"},
            {dt, D, 1, 300, 2000, 2, 128, 128, false, 0, 0, MaskKind::Dense, Layout::Dilated,
             1.0, false, tag + "_long_keys"},
            {dt, D, 2, 200, 1500, 1, 128, 128, false, 0, 0, MaskKind::Dense, Layout::Contiguous,
             3.0, false, tag + "_large_logits"}};
        for (const Case& c : cs) {
          // The wide kernels' items: 192 x 128 at d=64, 128 x 192 at d=128.
          const int64_t bm = D == 64 ? 192 : 128, bn = D == 64 ? 128 : 192;
          const int64_t items = (c.Nq + bm - 1) / bm * c.B * c.H;
          const ForwardTailSplit want =
              forward_tail_split(items, limit > 0 ? limit : sms, (c.Nk + bn - 1) / bn, bn);
          // Both runs on the same inputs (the naive's error computed once).
          SameInputs in;
          for (const char* tail : {"1", "0"}) {
            const ScopedEnv env("LONGATTN_SM90_FWD_TAIL", tail);
            SCOPED_TRACE(c.name + "_tail" + tail);
            FwdRun run;
            run_forward(c, run, in);
            if (run.kernel != "sm90-wide") continue;  // elsewhere: the portable kernels
            ++hopper_cases;
            const int64_t pieces = tail[0] == '1' ? want.items * want.pieces : 0;
            EXPECT_EQ(cuda::forward_last_split_pieces(), pieces);
            if (pieces > 0) ++split_cases;
          }
        }
      }
  }
  // On a Hopper device most cases take the split path (each checked above against the rule).
  if (hopper_cases > 0) EXPECT_GT(split_cases, hopper_cases / 4);
}

// Narrow first tiles of the head-dim-128 forward over complete masks without causality (the
// kNarrowKeys instantiations): where Nk is 64 or 128 keys over a multiple of 192 (and more than
// 192) and the launch has no tail split, each item walks a first tile of those keys, then whole
// 192-key tiles. One narrow tile and one or more whole ones, with large logits, strided views
// and 256-key blocks, on one CTA per item and on a grid of 5, each against the reference with
// the narrow tiles by the rule, forced (no tail split) and off; keys of 64 and 128 (one tile)
// keep the whole, masked tile. The launch reports the narrow width the rule gives.
TEST(FlashNarrow, FirstTilesMatchReference) {
  SKIP_WITHOUT_GPU();
  int dev = 0, sms = 0;
  ASSERT_EQ(cudaGetDevice(&dev), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), cudaSuccess);
  int narrow_runs = 0, hopper_runs = 0;
  for (int limit : {0, 5}) {
    const GridLimit grid(limit, 0);
    for (DType dt : {DType::BF16, DType::F16}) {
      const std::string tag = std::string(dtype_name(dt)) + "_grid" + std::to_string(limit);
      const Case cs[] = {
          {dt, 128, 1, 300, 64, 2, 128, 128, false, 0, 0, MaskKind::Dense, Layout::Contiguous,
           1.0, false, tag + "_one_tile64"},
          {dt, 128, 2, 200, 128, 1, 128, 128, false, 0, 0, MaskKind::Dense, Layout::Dilated, 1.0,
           false, tag + "_one_tile128"},
          {dt, 128, 1, 500, 320, 2, 128, 128, false, 0, 0, MaskKind::Dense, Layout::Contiguous,
           3.0, false, tag + "_320_large_logits"},
          {dt, 128, 1, 300, 1024, 2, 128, 128, false, 0, 0, MaskKind::Dense, Layout::Dilated,
           1.0, false, tag + "_1024_dilated"},
          {dt, 128, 2, 260, 1088, 1, 128, 128, false, 0, 0, MaskKind::Dense, Layout::Contiguous,
           2.0, false, tag + "_1088"},
          {dt, 128, 1, 130, 1472, 3, 256, 256, false, 0, 0, MaskKind::Dense, Layout::Contiguous,
           1.0, false, tag + "_1472_b256"}};
      for (const Case& c : cs) {
        SameInputs in;
        const int64_t items = (c.Nq + 127) / 128 * c.B * c.H;
        // narrow by the rule / forced (no tail split) / off
        for (const char* mode : {"rule", "forced", "off"}) {
          const std::string m = mode;
          const ScopedEnv env("LONGATTN_SM90_FWD_NARROW", m == "off" ? "0" : "1");
          const ScopedEnv tail("LONGATTN_SM90_FWD_TAIL", m == "forced" ? "0" : "");
          SCOPED_TRACE(c.name + "_narrow_" + m);
          FwdRun run;
          run_forward(c, run, in);
          if (run.kernel != "sm90-wide") continue;  // elsewhere: the portable kernels
          ++hopper_runs;
          const int64_t ctas = limit > 0 ? limit : sms;
          const int64_t want = m == "off" ? 0 : forward_narrow_keys(c.Nk, items, ctas, m == "rule");
          EXPECT_EQ(cuda::forward_last_narrow_keys(), want);
          if (want > 0) ++narrow_runs;
        }
      }
    }
  }
  // On a Hopper device every case runs the 192-key kernel; the four of more than 192 keys are
  // narrow at least when forced.
  if (hopper_runs > 0) EXPECT_GE(narrow_runs, 16);
}

// Narrow first tiles over runs (the kRuns kNarrowKeys instantiations, head dim 128, not causal):
// where most runs leave 64 or 128 keys over a multiple of 192 (forward_runs_narrow_keys), each
// row's walk starts with a tile of those keys; runs of other lengths (the rows near the ends)
// then end inside a masked last tile. Windows of 5 blocks (640 keys: 64 over) and of 7 (896
// keys: 128 over) on 16 key blocks, rows past Nq, strided views, large logits, two batches, on one
// CTA per item and on a grid of 3: each against the reference with the width by the rule,
// forced to 64 and to 128 (mismatched residues: a narrow tile and a masked last one in most
// rows) and off. The launch reports the width taken.
TEST(FlashNarrow, RunsFirstTilesMatchReference) {
  SKIP_WITHOUT_GPU();
  const ScopedEnv runs("LONGATTN_SM90_FWD_RUNS", "1");  // (these rows are short)
  int narrow_runs = 0, hopper_runs = 0, rule_runs = 0;
  for (int limit : {0, 3}) {
    const GridLimit grid(limit, 0);
    for (DType dt : {DType::BF16, DType::F16}) {
      const std::string tag = std::string(dtype_name(dt)) + "_grid" + std::to_string(limit);
      const Case cs[] = {
          {dt, 128, 1, 2048, 2048, 1, 128, 128, false, 0, 0, MaskKind::Window5,
           Layout::Contiguous, 1.0, false, tag + "_window5"},
          {dt, 128, 1, 1900, 2048, 1, 128, 128, false, 0, 0, MaskKind::Window5, Layout::Dilated,
           3.0, false, tag + "_window5_1900_dilated_large_logits"},
          {dt, 128, 2, 2048, 2048, 1, 128, 128, false, 0, 0, MaskKind::Window7,
           Layout::Contiguous, 1.0, false, tag + "_window7_b2"}};
      for (const Case& c : cs) {
        SameInputs in;
        for (const char* mode : {"", "64", "128", "0"}) {
          const std::string m = mode;
          const ScopedEnv env("LONGATTN_SM90_FWD_RUNS_NARROW", mode);
          SCOPED_TRACE(c.name + "_narrow_" + (m.empty() ? "rule" : m));
          FwdRun run;
          run_forward(c, run, in);
          if (run.kernel != "sm90-wide") continue;  // elsewhere: the portable kernels
          ++hopper_runs;
          const BlockMaskView v = host_mask_view(run.mask.host);
          int64_t want = 0;
          if (m.empty()) {
            want = forward_runs_narrow_keys(128, false, c.Nk, v);
            EXPECT_GT(want, 0) << "the rule takes these windows";
            ++rule_runs;
          } else if (m != "0") {
            want = v.run_keys_min > std::stoll(m) ? std::stoll(m) : 0;
          }
          EXPECT_EQ(cuda::forward_last_narrow_keys(), want);
          if (want > 0) ++narrow_runs;
        }
      }
    }
  }
  // On a Hopper device every run takes the 192-key kernel over runs, narrow in all but the off
  // runs (every run is longer than 128 keys).
  if (hopper_runs > 0) {
    EXPECT_EQ(hopper_runs, 48);
    EXPECT_EQ(narrow_runs, 36);
    EXPECT_EQ(rule_runs, 12);
  }
}

// Short items of the three-warpgroup forward (head dim 64, non-causal, complete masks;
// forward_short_items): after the tall items of 192 rows come items of 128 rows, whose third
// warpgroup sits out, as does every warpgroup whose rows lie past Nq. On a grid of 5 CTAs the
// rule takes them (a 1000-row call over 4 pairs: 24 tall items, 5 rounds, against 16 tall and 8
// short); LONGATTN_SM90_FWD_SHORT_TALL forces every count of tall items a pair, from none to all
// but one (short items ending inside Nq, past it, and exactly at it). Every run against the
// reference and bit for bit equal to the one-height cut (each row's tiles are walked in the same
// order whichever warpgroup and item hold it); sequences ending inside a tile, strided views.
TEST(FlashShortItems, MatchOneHeightCut) {
  SKIP_WITHOUT_GPU();
  int taken = 0, hopper = 0;
  const GridLimit grid(5, 0);
  for (DType dt : {DType::BF16, DType::F16}) {
    const std::string tag = dtype_name(dt);
    const Case cs[] = {
        {dt, 64, 2, 1000, 900, 2, 128, 128, false, 0, 0, MaskKind::Dense, Layout::Contiguous,
         1.0, false, tag + "_1000"},
        {dt, 64, 1, 1024, 700, 3, 128, 128, false, 0, 0, MaskKind::Dense, Layout::Dilated, 2.0,
         false, tag + "_1024_dilated"}};
    for (const Case& c : cs) {
      const uint64_t seed = std::random_device{}();
      const int64_t whole = (c.Nq + 191) / 192;
      FwdRun base;
      {
        const ScopedEnv off("LONGATTN_SM90_FWD_SHORT", "0");
        SCOPED_TRACE(c.name + "_one_height");
        run_forward(c, base, seed);
      }
      if (base.kernel != "sm90-wide") continue;  // elsewhere: the portable kernels
      std::vector<std::string> plans = {""};  // the rule
      for (int64_t t = 0; t < whole; ++t) plans.push_back(std::to_string(t));
      for (const std::string& tall : plans) {
        const ScopedEnv force("LONGATTN_SM90_FWD_SHORT_TALL", tall);
        SCOPED_TRACE(c.name + "_tall" + (tall.empty() ? "_rule" : tall));
        FwdRun run;
        run.naive_o = base.naive_o;
        run.naive_l = base.naive_l;
        run_forward(c, run, seed);
        ++hopper;
        const int shorts = cuda::forward_last_short_items();
        if (!tall.empty()) {
          EXPECT_EQ(shorts, (c.Nq - std::stoll(tall) * 192 + 127) / 128);
        } else {
          // Against the one-height cut's rounds, or its last round split if that is taken.
          const int64_t items = whole * c.B * c.H;
          double baseline = static_cast<double>((items + 4) / 5);
          const ForwardTailSplit split = forward_tail_split(items, 5, (c.Nk + 127) / 128, 128);
          if (split.pieces >= 2) baseline = static_cast<double>(items / 5) + split.tail_cost;
          const ForwardShortItems want = forward_short_items(c.Nq, c.B * c.H, 5, baseline);
          EXPECT_EQ(shorts, want.shorts);
        }
        if (shorts > 0) ++taken;
        ASSERT_EQ(run.o.numel(), base.o.numel());
        int64_t diff = 0;
        for (int64_t i = 0; i < run.o.numel(); ++i)
          diff += static_cast<const double*>(run.o.data())[i] !=
                  static_cast<const double*>(base.o.data())[i];
        for (int64_t i = 0; i < run.lse.numel(); ++i)
          diff += static_cast<const double*>(run.lse.data())[i] !=
                  static_cast<const double*>(base.lse.data())[i];
        EXPECT_EQ(diff, 0) << "elements differing from the one-height cut";
      }
    }
  }
  if (hopper > 0) EXPECT_GT(taken, hopper / 2);
}

// Programmatic dependent launch: calls back to back on one stream, each reading what the call
// before it wrote, give the same results with it on (the default) as with every launch fully
// serialised (LONGATTN_SM90_PDL=0): a forward whose q is the previous forward's o (with fewer
// items than SMs, each CTA lets the next launch go at once, so that forward's reads of q wait
// only in pdl_wait), and two backwards adding into the same dq, dk and dv (dk and dv: the same
// bits, unless the backward's tail split cut works into parts, which add into dk and dv in any
// order, as the CTAs add into dq: then within fp32 rounding).
TEST(FlashPdl, ChainedCallsMatchSerialisedLaunches) {
  SKIP_WITHOUT_GPU();
  for (int64_t D : {64, 128})
    for (bool causal : {false, true}) {
      const int64_t B = 1, N = 2048, H = 4;
      SCOPED_TRACE("d" + std::to_string(D) + (causal ? "_causal" : ""));
      const MaskGeometry geo{N, N, 128, 128, causal, 0, 0};
      MaskPair mask = make_mask(MaskKind::Dense, geo, 1);
      const Mirrored q = make_mirrored(Layout::Contiguous, DType::BF16, B, N, H, D, 11, 1.0);
      const Mirrored k = make_mirrored(Layout::Contiguous, DType::BF16, B, N, H, D, 12, 1.0);
      const Mirrored v = make_mirrored(Layout::Contiguous, DType::BF16, B, N, H, D, 13, 1.0);
      const Mirrored dout = make_mirrored(Layout::Contiguous, DType::BF16, B, N, H, D, 14, 1.0);
      Tensor got[2][5];  // per mode: o and lse of the second forward, dq, dk, dv
      bool tail_split = false;
      for (int mode = 0; mode < 2; ++mode) {
        const ScopedEnv env("LONGATTN_SM90_PDL", mode == 0 ? "1" : "0");
        Mirrored o1 = make_mirrored(Layout::Contiguous, DType::BF16, B, N, H, D, 0, 1.0, true);
        Mirrored o2 = make_mirrored(Layout::Contiguous, DType::BF16, B, N, H, D, 0, 1.0, true);
        Mirrored l1 = make_mirrored(Layout::Contiguous, DType::F32, B, N, H, 1, 0, 1.0, true);
        Mirrored l2 = make_mirrored(Layout::Contiguous, DType::F32, B, N, H, 1, 0, 1.0, true);
        Mirrored dq = make_mirrored(Layout::Contiguous, DType::F32, B, N, H, D, 21, 1.0);
        Mirrored dk = make_mirrored(Layout::Contiguous, DType::F32, B, N, H, D, 22, 1.0);
        Mirrored dv = make_mirrored(Layout::Contiguous, DType::F32, B, N, H, D, 23, 1.0);
        const AttnTensors t{q.dview, k.dview, v.dview, o1.dview, l1.dview};
        const AttnPositions pos{0.0, causal, 0, 0};
        const AttnFwdParams f = make_fwd_params(t, mask.dev, pos);
        AttnFwdParams f2 = f;
        f2.q = o1.dview;
        f2.o = o2.dview;
        f2.lse = l2.dview;
        const AttnBwdParams p = make_bwd_params(
            t, AttnGrads{dout.dview, dq.dview, dk.dview, dv.dview}, mask.dev, mask.dev_t, pos);
        cuda::flash_forward(f, nullptr);
        cuda::flash_forward(f2, nullptr);
        cuda::flash_backward(p, nullptr);
        cuda::flash_backward(p, nullptr);
        if (cuda::backward_last_tail_parts() > 0) tail_split = true;
        ck(cudaDeviceSynchronize(), "chained calls");
        Mirrored* outs[5] = {&o2, &l2, &dq, &dk, &dv};
        for (int i = 0; i < 5; ++i) {
          outs[i]->download();
          got[mode][i] = to_f64(outs[i]->hview);
        }
      }
      const char* names[5] = {"o of the second forward", "its lse", "dq", "dk", "dv"};
      for (int i = 0; i < 5; ++i) {
        const ErrorStats e = compare(got[0][i].view(), got[1][i].view());
        EXPECT_TRUE(e.finite) << names[i];
        if (i == 2 || (i > 2 && tail_split))
          EXPECT_LE(e.max_abs, 1e-5 * std::max(1.0, e.max_ref)) << names[i];
        else
          EXPECT_EQ(e.max_abs, 0.0) << names[i];
      }
    }
}

// The persistent Hopper backward with a grid of 3 CTAs: every CTA takes many (key block, part,
// head, batch) works, so the work handoff, the K/V reload while the last work's dK and dV go
// out, the stage ring, dS and dQ buffers carried across works, works without tiles and query
// parts waiting on parts another CTA holds are exercised; elsewhere the portable kernels run the
// same checks.
TEST(FlashPersistent, BackwardManyWorksPerCta) {
  SKIP_WITHOUT_GPU();
  const GridLimit limit(3, 0);
  struct Run {
    int parts;  // LONGATTN_SM90_QSPLIT (0: the dispatch's choice)
    Case c;
  };
  std::vector<Run> runs;
  for (DType dt : {DType::BF16, DType::F16})
    for (int64_t D : {64, 128}) {
      const std::string tag = std::string(dtype_name(dt)) + "_d" + std::to_string(D);
      runs.push_back({0, {dt, D, 3, 700, 650, 3, 128, 128, true, 0, 0, MaskKind::Dense,
                          Layout::Contiguous, 1.0, false, tag + "_bwd_persistent_dense_causal"}});
      runs.push_back({0, {dt, D, 2, 900, 900, 3, 256, 128, true, 0, 0, MaskKind::Sparse,
                          Layout::Dilated, 3.0, false, tag + "_bwd_persistent_sparse"}});
    }
  runs.push_back({3, {DType::BF16, 128, 2, 1000, 1100, 2, 128, 128, false, 0, 0, MaskKind::Dense,
                      Layout::Contiguous, 1.0, false, "bf16_d128_bwd_persistent_parts3"}});
  runs.push_back({2, {DType::F16, 128, 1, 900, 900, 3, 128, 128, true, 0, 0, MaskKind::Sparse,
                      Layout::Contiguous, 1.0, false, "f16_d128_bwd_persistent_parts2_sparse"}});
  for (const Run& r : runs) {
    SCOPED_TRACE(r.c.name);
    const ScopedEnv split("LONGATTN_SM90_QSPLIT", parts_value(r.parts));
    check_backward(r.c, std::random_device{}());
  }
}

// The Hopper backward at head dim 128 with the query range cut into parts (one CTA per key
// block and part, the parts adding into dk and dv in order): 2 and 3 parts, and 7, more parts
// than the mask has query blocks (empty parts). Elsewhere the portable kernels run the same
// checks.
TEST(FlashSplit, QueryPartsAddInOrder) {
  SKIP_WITHOUT_GPU();
  struct Run {
    int parts;
    Case c;
  };
  const Run runs[] = {
      {2, {DType::BF16, 128, 2, 1100, 1250, 2, 128, 128, false, 0, 0, MaskKind::Dense,
           Layout::Contiguous, 1.0, false, "bf16_d128_parts2_dense_ragged"}},
      {3, {DType::F16, 128, 1, 1000, 1000, 2, 256, 128, true, 0, 0, MaskKind::Sparse,
           Layout::Dilated, 3.0, false, "f16_d128_parts3_causal_sparse"}},
      {7, {DType::BF16, 128, 1, 900, 700, 3, 128, 128, false, 0, 0, MaskKind::Sparse,
           Layout::Contiguous, 1.0, false, "bf16_d128_parts7_sparse"}},
      {3, {DType::BF16, 128, 1, 700, 650, 2, 128, 128, true, 0, 0, MaskKind::Dense,
           Layout::Contiguous, 1.0, false, "bf16_d128_parts3_dense_causal"}},
      {2, {DType::F16, 128, 1, 800, 800, 2, 128, 128, true, 0, 0, MaskKind::Sparse,
           Layout::Contiguous, 1.0, false, "f16_d128_parts2_causal_sparse"}}};
  for (const Run& r : runs) {
    SCOPED_TRACE(r.c.name);
    const ScopedEnv split("LONGATTN_SM90_QSPLIT", parts_value(r.parts));
    check_backward(r.c, std::random_device{}());
  }
}

// The Hopper backward's 80-query tiles (head dim 128 over complete masks, walked by position,
// dQ computed transposed): query counts that are not multiples of 80 (and one under 80), more
// keys than queries and the reverse, causality with queries after the keys (a ring step) and
// with keys after the first queries (rows that see nothing), several batches and heads; the
// query range in 3 parts, dK and dV by TMA reduces (eight 32-column rounds through the dQ
// staging tile) and from registers, and on a grid of 3 CTAs (many works per CTA). The other
// backward tests take these tiles for their complete masks at head dim 128 as well.
struct M80Run {
  int parts;        // LONGATTN_SM90_QSPLIT (0: the dispatch's choice)
  const char* dkv;  // LONGATTN_SM90_DKV_TMA ("": the dispatch's choice)
  int grid;         // persistent CTAs (0: one per SM)
  Case c;
};
void check_m80_run(const M80Run& r) {
  const ScopedEnv split("LONGATTN_SM90_QSPLIT", parts_value(r.parts));
  const ScopedEnv dkv("LONGATTN_SM90_DKV_TMA", r.dkv);
  const GridLimit limit(r.grid, 0);
  check_backward(r.c, std::random_device{}());
}

TEST(FlashM80, BackwardMatchesReference) {
  SKIP_WITHOUT_GPU();
  const M80Run runs[] = {
      {0, "1", 0, {DType::BF16, 128, 2, 1000, 1100, 2, 128, 128, false, 0, 0, MaskKind::Dense,
                   Layout::Contiguous, 1.0, false, "bf16_m80_dense_ragged"}},
      {3, "1", 0, {DType::F16, 128, 1, 930, 1000, 3, 128, 128, false, 0, 0, MaskKind::Dense,
                   Layout::Contiguous, 1.0, false, "f16_m80_dense_parts3"}},
      {3, "0", 0, {DType::BF16, 128, 1, 900, 1000, 2, 128, 128, true, 100, 0, MaskKind::Dense,
                   Layout::Contiguous, 3.0, false, "bf16_m80_causal_offset_parts3_flags"}},
      {0, "0", 0, {DType::F16, 128, 1, 700, 650, 2, 128, 128, true, 0, 40, MaskKind::Dense,
                   Layout::Contiguous, 1.0, false, "f16_m80_causal_empty_rows"}},
      {0, "1", 0, {DType::BF16, 128, 1, 50, 300, 2, 128, 128, false, 0, 0, MaskKind::Dense,
                   Layout::Contiguous, 1.0, false, "bf16_m80_short_queries"}},
      {0, "", 3, {DType::BF16, 128, 2, 1100, 900, 3, 128, 128, true, 0, 0, MaskKind::Dense,
                  Layout::Dilated, 1.0, false, "bf16_m80_grid3_causal_dilated"}},
      {2, "1", 3, {DType::F16, 128, 2, 1000, 1000, 2, 128, 128, false, 0, 0, MaskKind::Dense,
                   Layout::Contiguous, 1.0, false, "f16_m80_grid3_parts2"}}};
  for (const M80Run& r : runs) {
    SCOPED_TRACE(r.c.name);
    check_m80_run(r);
  }
}

// Each case over its mask: the call takes kernel `want` (and `other` with `off` set to 0), and
// its gradients match the reference.
void check_tiles_taken(const std::vector<M80Run>& runs, const std::string& want, const char* off,
                       const std::string& other = "sm90") {
  for (const M80Run& r : runs) {
    SCOPED_TRACE(r.c.name);
    const MaskGeometry g{r.c.Nq, r.c.Nk, r.c.block_q, r.c.block_k, r.c.causal, r.c.q_offset,
                         r.c.k_offset};
    MaskPair mp = make_mask(r.c.mask, g, 1);
    const int64_t D = r.c.D;
    Mirrored q = make_mirrored(Layout::Contiguous, r.c.dt, 1, r.c.Nq, 1, D, 1, 1.0);
    Mirrored kv = make_mirrored(Layout::Contiguous, r.c.dt, 1, r.c.Nk, 1, D, 1, 1.0);
    Mirrored lse = make_mirrored(Layout::Contiguous, DType::F32, 1, r.c.Nq, 1, 1, 0, 1.0, true);
    Mirrored dq = make_mirrored(Layout::Contiguous, DType::F32, 1, r.c.Nq, 1, D, 0, 1.0, true);
    Mirrored dkv = make_mirrored(Layout::Contiguous, DType::F32, 1, r.c.Nk, 1, D, 0, 1.0, true);
    AttnBwdParams pb;
    pb.q = pb.o = pb.d_o = q.dview;
    pb.k = pb.v = kv.dview;
    pb.lse = lse.dview;
    pb.dq = dq.dview;
    pb.dk = pb.dv = dkv.dview;
    pb.mask = mp.dev;
    pb.mask_t = mp.dev_t;
    pb.causal = r.c.causal;
    pb.q_offset = r.c.q_offset;
    pb.k_offset = r.c.k_offset;
    if (cuda::flash_backward_kernel(pb).rfind("sm90", 0) == 0) {
      EXPECT_EQ(cuda::flash_backward_kernel(pb), want);
      const ScopedEnv not_taken(off, "0");
      EXPECT_EQ(cuda::flash_backward_kernel(pb), other);
    }
    check_m80_run(r);
  }
}

// The 80-query tiles over masks whose transposed rows are runs (windows: each key block's query
// range from its run's first block, the queries past its last block masked), forced on for these
// short rows: ragged lengths, key blocks no query sees (empty rows), causality with an offset,
// 256-query and 256-key mask blocks, query parts with the ordering flags, a grid of 3 CTAs on
// dilated views.
TEST(FlashM80, WindowMasksMatchReference) {
  SKIP_WITHOUT_GPU();
  // Forced on for these short rows (by default from 1024 queries a row).
  const ScopedEnv force("LONGATTN_SM90_BWD_RUNS", "1");
  check_tiles_taken(
      {{0, "1", 0, {DType::BF16, 128, 2, 1000, 1100, 2, 128, 128, false, 0, 0, MaskKind::Window,
                    Layout::Contiguous, 1.0, false, "bf16_m80_window_ragged"}},
       {3, "0", 0, {DType::F16, 128, 1, 1200, 1200, 3, 128, 128, true, 0, 0, MaskKind::Window,
                    Layout::Contiguous, 3.0, false, "f16_m80_window_causal_parts3_flags"}},
       {0, "", 3, {DType::BF16, 128, 1, 700, 1300, 2, 128, 128, false, 0, 0, MaskKind::Window,
                   Layout::Dilated, 1.0, false, "bf16_m80_window_empty_rows_grid3"}},
       {0, "1", 0, {DType::F16, 128, 1, 1000, 1300, 2, 256, 128, true, 300, 0, MaskKind::Window,
                    Layout::Contiguous, 1.0, false, "f16_m80_window_causal_offset_b256x128"}},
       {2, "1", 0, {DType::BF16, 128, 1, 900, 1000, 2, 128, 256, false, 0, 0, MaskKind::Window,
                    Layout::Contiguous, 1.0, false, "bf16_m80_window_b128x256_parts2"}}},
      "sm90-m80", "LONGATTN_SM90_BWD_RUNS");
}

// The Hopper backward's 128-query tiles (head dim 64 over complete masks, walked by position,
// P^T and dS^T as register operands over eight k16 steps, each warpgroup's dQ the tile's rows
// 64 w..): query counts that are not multiples of 128, under 128 and under 64 (the second
// warpgroup's dQ rows all past the end), causality with queries after the keys and with rows
// that see nothing, several batches and heads; the query range in 3 parts, dK and dV by TMA
// reduces (four 32-column rounds through the dQ staging tile) and from registers, and on a grid
// of 3 CTAs; dq by atomics where its rows do not allow TMA. The other backward tests take these
// tiles for their complete masks at head dim 64.
TEST(FlashM128, BackwardMatchesReference) {
  SKIP_WITHOUT_GPU();
  const M80Run runs[] = {
      {0, "1", 0, {DType::BF16, 64, 2, 1000, 1100, 2, 128, 128, false, 0, 0, MaskKind::Dense,
                   Layout::Contiguous, 1.0, false, "bf16_m128_dense_ragged"}},
      {3, "1", 0, {DType::F16, 64, 1, 930, 1000, 3, 128, 128, false, 0, 0, MaskKind::Dense,
                   Layout::Contiguous, 1.0, false, "f16_m128_dense_parts3"}},
      {0, "0", 0, {DType::BF16, 64, 1, 900, 1000, 2, 128, 128, true, 100, 0, MaskKind::Dense,
                   Layout::Contiguous, 3.0, false, "bf16_m128_causal_offset_registers"}},
      {0, "1", 0, {DType::F16, 64, 1, 700, 650, 2, 128, 128, true, 0, 40, MaskKind::Dense,
                   Layout::Contiguous, 1.0, false, "f16_m128_causal_empty_rows"}},
      {0, "1", 0, {DType::BF16, 64, 1, 50, 300, 2, 128, 128, false, 0, 0, MaskKind::Dense,
                   Layout::Contiguous, 1.0, false, "bf16_m128_short_queries"}},
      {0, "0", 0, {DType::F16, 64, 2, 100, 260, 1, 128, 128, true, 200, 0, MaskKind::Dense,
                   Layout::Contiguous, 1.0, false, "f16_m128_short_causal_registers"}},
      {0, "", 3, {DType::BF16, 64, 2, 1100, 900, 3, 128, 128, true, 0, 0, MaskKind::Dense,
                  Layout::Dilated, 1.0, false, "bf16_m128_grid3_causal_dilated"}},
      {2, "1", 3, {DType::F16, 64, 2, 1000, 1000, 2, 128, 128, false, 0, 0, MaskKind::Dense,
                   Layout::Contiguous, 1.0, false, "f16_m128_grid3_parts2"}},
      {0, "1", 0, {DType::BF16, 64, 1, 600, 700, 2, 128, 128, true, 0, 0, MaskKind::Dense,
                   Layout::Contiguous, 1.0, false, "bf16_m128_causal_dq_atomics", true}}};
  for (const M80Run& r : runs) {
    SCOPED_TRACE(r.c.name);
    check_m80_run(r);
  }
}

// The 128-query tiles over window masks (as above, head dim 64): the second warpgroup's dQ rows
// past a run's end, dK and dV by reduces and from registers, 3 parts with reduces.
TEST(FlashM128, WindowMasksMatchReference) {
  SKIP_WITHOUT_GPU();
  const ScopedEnv force("LONGATTN_SM90_BWD_RUNS", "1");
  check_tiles_taken(
      {{0, "1", 0, {DType::BF16, 64, 2, 1000, 1100, 2, 128, 128, false, 0, 0, MaskKind::Window,
                    Layout::Contiguous, 1.0, false, "bf16_m128_window_ragged"}},
       {3, "1", 0, {DType::F16, 64, 1, 1200, 1200, 3, 128, 128, true, 0, 0, MaskKind::Window,
                    Layout::Contiguous, 3.0, false, "f16_m128_window_causal_parts3"}},
       {0, "", 3, {DType::BF16, 64, 1, 700, 1300, 2, 128, 128, false, 0, 0, MaskKind::Window,
                   Layout::Dilated, 1.0, false, "bf16_m128_window_empty_rows_grid3"}},
       {0, "0", 0, {DType::F16, 64, 1, 1000, 1300, 2, 256, 128, true, 300, 0, MaskKind::Window,
                    Layout::Contiguous, 1.0, false, "f16_m128_window_causal_offset_registers"}},
       {2, "1", 0, {DType::BF16, 64, 1, 900, 1000, 2, 128, 256, false, 0, 0, MaskKind::Window,
                    Layout::Contiguous, 1.0, false, "bf16_m128_window_b128x256_parts2"}}},
      "sm90-m128", "LONGATTN_SM90_BWD_RUNS", "sm90-m128-lists");
}

// The 128-query tiles over the lists of scattered masks (head dim 64, query blocks of 128 or 256:
// one or two tiles a listed block): ragged lengths, causality with an offset and with rows that
// see nothing, 3 parts with reduces, dK/dV from registers, phased walks on a grid of 3 CTAs,
// dilated views; each case takes these tiles (and the 64-query tiles when they are turned off).
TEST(FlashM128, ListedMasksMatchReference) {
  SKIP_WITHOUT_GPU();
  const M80Run runs[] = {
      {0, "1", 0, {DType::BF16, 64, 2, 1000, 1100, 2, 128, 128, false, 0, 0, MaskKind::Sparse,
                   Layout::Contiguous, 1.0, false, "bf16_m128_lists_ragged"}},
      {3, "1", 0, {DType::F16, 64, 1, 1300, 1200, 3, 128, 128, true, 0, 0, MaskKind::Sparse,
                   Layout::Contiguous, 3.0, false, "f16_m128_lists_causal_parts3"}},
      {0, "0", 0, {DType::BF16, 64, 1, 1000, 1300, 2, 256, 128, true, 300, 0, MaskKind::Sparse,
                   Layout::Contiguous, 1.0, false, "bf16_m128_lists_causal_offset_b256_registers"}},
      {0, "1", 0, {DType::F16, 64, 1, 700, 650, 2, 128, 128, true, 0, 40, MaskKind::Sparse,
                   Layout::Contiguous, 1.0, false, "f16_m128_lists_causal_empty_rows"}},
      {0, "", 3, {DType::BF16, 64, 2, 1100, 900, 3, 128, 256, false, 0, 0, MaskKind::Sparse,
                  Layout::Dilated, 1.0, false, "bf16_m128_lists_grid3_dilated_b128x256"}}};
  check_tiles_taken({std::begin(runs), std::end(runs)}, "sm90-m128-lists",
                    "LONGATTN_SM90_BWD_M128_LISTS");
}

// Masks whose rows are runs of key blocks (windows, random runs, empty rows): the Hopper forward
// walks each row's key range by position, at head dim 128 in 176-key tiles, at head dim 64 in
// 192-row tiles over the union of the runs of the two mask rows a tile may span (disjoint runs,
// an empty row next to a window, rows past Nq), each warpgroup masking outside its own
// (LONGATTN_SM90_FWD_RUNS=1 takes that path for these short rows, "0" the listed blocks), on one
// CTA per item and on a grid of 3 CTAs that walks many items with different ranges.
TEST(FlashRuns, ForwardMatchesReference) {
  SKIP_WITHOUT_GPU();
  for (const char* on : {"1", "0"}) {
    setenv("LONGATTN_SM90_FWD_RUNS", on, 1);
    for (int grid : {0, 3}) {
      const GridLimit limit(grid, 2);
      for (DType dt : {DType::BF16, DType::F16}) {
        for (int64_t d : {128, 64}) {
          const std::string tag = std::string(dtype_name(dt)) + "_d" + std::to_string(d) +
                                  "_runs" + on + "_grid" + std::to_string(grid);
          const Case cs[] = {
              {dt, d, 2, 1000, 1100, 2, 128, 128, false, 0, 0, MaskKind::Runs,
               Layout::Contiguous, 1.0, false, tag + "_ragged"},
              {dt, d, 1, 1200, 1200, 3, 128, 128, true, 0, 0, MaskKind::Runs, Layout::Dilated,
               3.0, false, tag + "_causal"},
              {dt, d, 1, 700, 1300, 2, 256, 128, true, 500, 0, MaskKind::Runs,
               Layout::Contiguous, 1.0, false, tag + "_causal_offset_b256x128"},
              {dt, d, 1, 900, 1000, 1, 128, 256, false, 0, 0, MaskKind::Runs,
               Layout::Contiguous, 1.0, false, tag + "_b128x256"},
              {dt, d, 1, 1536, 1400, 2, 128, 128, true, 0, 0, MaskKind::Runs,
               Layout::Contiguous, 1.0, false, tag + "_causal_whole_tiles"}};
          for (const Case& c : cs) {
            SCOPED_TRACE(c.name);
            FwdRun run;
            run_forward(c, run, std::random_device{}());
            if (run.kernel.rfind("sm90", 0) == 0)
              EXPECT_EQ(run.kernel, std::string(on) == "1" ? "sm90-wide" : "sm90");
          }
        }
      }
    }
  }
  unsetenv("LONGATTN_SM90_FWD_RUNS");
}

// Head dim 128 over scattered rows, not causal (forward_gathered_tiles): 192-key tiles gathered
// from the 64-key chunks of each row's listed blocks. Within the reference bound with a half
// block at the end of the keys (the row's last chunk dropped), rows whose chunks are not a
// multiple of three (the last tile masked past its chunks), empty rows, 256-query and 256-key
// blocks, strided views with extreme logits, several batches and heads, and many items per CTA
// (grid 3); LONGATTN_SM90_FWD_GATHER=1 takes them whatever the rows' length. Causal calls,
// LONGATTN_SM90_FWD_GATHER=0 and head dim 64 keep the 128-key listed tiles; by default only rows
// of kForwardGatherKeys keys or more on average take them.
TEST(FlashGather, ForwardMatchesReference) {
  SKIP_WITHOUT_GPU();
  {
    const ScopedEnv env("LONGATTN_SM90_FWD_GATHER", "");
    unsetenv("LONGATTN_SM90_FWD_GATHER");
    for (int64_t nk : {int64_t{2048}, int64_t{16384}}) {
      // Sparse rows list about half of the key blocks: 1100 keys at 2K, 8300 at 16K.
      const MaskGeometry g{256, nk, 128, 128, false, 0, 0};
      MaskPair mp = make_mask(MaskKind::Sparse, g, 7);
      const Bf16Call call(256, nk, 128);
      const std::string k = cuda::flash_forward_kernel(call.params(mp.dev));
      if (k.rfind("sm90", 0) == 0)
        EXPECT_EQ(k, nk >= 16384 ? "sm90-gather" : "sm90") << "nk " << nk;
    }
  }
  const ScopedEnv gather("LONGATTN_SM90_FWD_GATHER", "1");
  forward_on_grids(
      [](DType dt, const std::string& tag) {
        return std::vector<Case>{
            {dt, 128, 2, 1000, 1088, 2, 128, 128, false, 0, 0, MaskKind::Sparse,
             Layout::Contiguous, 1.0, false, tag + "_sparse_half_block_end"},
            {dt, 128, 1, 700, 1280, 3, 256, 128, false, 0, 0, MaskKind::Sparse, Layout::Dilated,
             3.0, false, tag + "_sparse_b256x128_strided"},
            {dt, 128, 1, 900, 1536, 2, 128, 256, false, 300, 0, MaskKind::Sparse,
             Layout::Contiguous, 1.0, false, tag + "_sparse_b128x256_offset"},
            {dt, 128, 2, 1100, 1216, 1, 128, 128, false, 0, 0, MaskKind::Window,
             Layout::Contiguous, 1.0, false, tag + "_window_half_block_end"},
            {dt, 128, 1, 1024, 1024, 2, 128, 128, false, 0, 0, MaskKind::Runs,
             Layout::Contiguous, 1.0, false, tag + "_runs"}};
      },
      [](const FwdRun& run) {
        if (run.kernel.rfind("sm90", 0) == 0) EXPECT_EQ(run.kernel, "sm90-gather");
      });
  // What does not take the gathered tiles.
  for (const char* what : {"causal", "off", "d64", "nk"}) {
    SCOPED_TRACE(what);
    const int64_t D = std::string(what) == "d64" ? 64 : 128;
    const int64_t nk = std::string(what) == "nk" ? 1000 : 1024;
    const bool causal = std::string(what) == "causal";
    const Case c{DType::BF16, D, 1, 512, nk, 1, 128, 128, causal, 0, 0, MaskKind::Sparse,
                 Layout::Contiguous, 1.0, false, std::string("not_gathered_") + what};
    const ScopedEnv env("LONGATTN_SM90_FWD_GATHER", std::string(what) == "off" ? "0" : "1");
    FwdRun run;
    run_forward(c, run, std::random_device{}());
    if (run.kernel.rfind("sm90", 0) == 0) EXPECT_EQ(run.kernel, "sm90");
  }
}

// The head-dim-64 forward moves a row's running maximum only when a tile's exceeds it by more than
// kFwdMargin (log2 units), and skips the rescale of o where no row of a warp moved it: within the
// reference bound through each of its kernels (192-row tiles over a complete mask, over masks of
// runs, 128-row tiles over listed blocks) where the maxima grow by less than the margin from
// tile to tile (q and k of deviation 2: P above 1 on many tiles) and by more (deviation 4:
// logits of tens of log2 units), causal with offsets (rows whose first tiles see nothing), keys
// ending inside a block, on one CTA per item and on a grid of 3 CTAs.
TEST(FlashMargin, ForwardMatchesReference) {
  SKIP_WITHOUT_GPU();
  forward_on_grids(
      [](DType dt, const std::string& tag) {
        return std::vector<Case>{
            {dt, 64, 1, 1000, 1900, 2, 128, 128, false, 0, 0, MaskKind::Dense,
             Layout::Contiguous, 2.0, false, tag + "_dense_dev2"},
            {dt, 64, 1, 1100, 1500, 2, 128, 128, true, 300, 0, MaskKind::Dense,
             Layout::Contiguous, 4.0, false, tag + "_dense_causal_offset_dev4"},
            {dt, 64, 2, 1100, 1216, 1, 128, 128, false, 0, 0, MaskKind::Window,
             Layout::Contiguous, 4.0, false, tag + "_window_dev4"},
            {dt, 64, 1, 1200, 2304, 3, 256, 128, false, 0, 0, MaskKind::Sparse, Layout::Dilated,
             2.0, false, tag + "_sparse_strided_dev2"},
            {dt, 64, 1, 900, 2000, 2, 128, 128, true, 1000, 0, MaskKind::Sparse,
             Layout::Contiguous, 4.0, false, tag + "_sparse_causal_offset_dev4"}};
      },
      [](const FwdRun&) {});
}

// The Hopper backward adds dK and dV into fp32 dk, dv by TMA reduces from shared memory
// (LONGATTN_SM90_DKV_TMA=0: loads, adds and stores from registers; head dim 64 stages both sums
// at once, head dim 128 in four 64-column rounds through two buffers per warpgroup, one of them
// the dQ staging tile): both within the reference bound (check_backward, dk and dv starting from
// random values), with key rows past Nk inside a warpgroup's 64 keys, causality with an offset,
// key blocks no query sees, several batches and heads, and the query range in 3 parts (which then
// add in any order; at head dim 64 only with the reduces); the reduces on one CTA per work and
// on a grid of 3 CTAs, whose CTAs stage many works' sums in the same buffers.
TEST(FlashDkvTma, BackwardMatchesReference) {
  SKIP_WITHOUT_GPU();
  auto check_all = [](const auto& cases) {
    for (const Case& c : cases) {
      SCOPED_TRACE(c.name);
      check_backward(c, std::random_device{}());
    }
  };
  for (const char* on : {"1", "0"}) {
    const ScopedEnv env("LONGATTN_SM90_DKV_TMA", on);
    const bool reduces = std::string(on) == "1";
    // (The load-add-store path once, on one CTA per work: the other backward tests run it too.)
    for (int grid : {0, 3}) {
      if (!reduces && grid != 0) continue;
      const GridLimit limit(grid, 0);
      const std::string tag = std::string("dkv_tma") + on + "_grid" + std::to_string(grid);
      if (reduces) {
        const ScopedEnv split("LONGATTN_SM90_QSPLIT", parts_value(3));
        const Case cs[] = {
            {DType::BF16, 128, 1, 1000, 1000, 2, 256, 128, true, 0, 0, MaskKind::Sparse,
             Layout::Dilated, 3.0, false, tag + "_bf16_d128_parts3_causal_sparse"},
            {DType::F16, 128, 2, 900, 1000, 2, 128, 128, false, 0, 0, MaskKind::Sparse,
             Layout::Contiguous, 1.0, false, tag + "_f16_d128_parts3_sparse_ragged"},
            // Head dim 64 takes parts only with the reduces (else one part, the same sums).
            {DType::BF16, 64, 2, 1100, 1000, 2, 128, 128, false, 0, 0, MaskKind::Sparse,
             Layout::Contiguous, 1.0, false, tag + "_bf16_d64_parts3_sparse_ragged"},
            {DType::F16, 64, 1, 1000, 1000, 3, 256, 128, true, 0, 0, MaskKind::Sparse,
             Layout::Dilated, 3.0, false, tag + "_f16_d64_parts3_causal_sparse"}};
        check_all(cs);
      }
      const Case cs[] = {
          {DType::BF16, 128, 2, 1000, 1100, 2, 128, 128, false, 0, 0, MaskKind::Dense,
           Layout::Contiguous, 1.0, false, tag + "_bf16_d128_dense_ragged"},
          {DType::F16, 128, 1, 900, 1000, 3, 128, 128, true, 0, 0, MaskKind::Dense,
           Layout::Contiguous, 1.0, false, tag + "_f16_d128_dense_causal"},
          {DType::BF16, 128, 1, 1000, 1000, 2, 256, 128, true, 300, 0, MaskKind::Sparse,
           Layout::Contiguous, 3.0, false, tag + "_bf16_d128_sparse_causal_offset_b256"},
          {DType::BF16, 64, 2, 1000, 1100, 2, 128, 128, false, 0, 0, MaskKind::Dense,
           Layout::Contiguous, 1.0, false, tag + "_bf16_dense_ragged"},
          {DType::F16, 64, 1, 900, 1000, 3, 128, 128, true, 0, 0, MaskKind::Dense,
           Layout::Contiguous, 1.0, false, tag + "_f16_dense_causal"},
          {DType::BF16, 64, 1, 1000, 1000, 2, 256, 128, true, 300, 0, MaskKind::Sparse,
           Layout::Contiguous, 3.0, false, tag + "_bf16_sparse_causal_offset_b256"},
          {DType::F16, 64, 2, 700, 860, 2, 128, 128, false, 0, 0, MaskKind::Sparse,
           Layout::Dilated, 1.0, false, tag + "_f16_sparse_dilated"}};
      check_all(cs);
    }
  }
}

// Tail splitting of the persistent Hopper backward (backward_tail_split): non-causal calls over
// complete masks cut their last round's works along the query range, on a grid of 5 CTAs (12 and
// 16 works: 2 and 1 split), on a grid of 4 (7 works of 32 query tiles: the last 3 as 4 spans,
// one in two pieces) and, in bf16, on the whole device (fewer works than CTAs: all split); with
// fp32 dk and dv (each piece adding its dK and dV by TMA reduces) and, once per head dim and
// dtype, dk and dv of the input dtype (each piece storing its sums for the last to finish, which
// adds them in piece order and adds the total into dk and dv). Elsewhere the portable kernels run
// the same checks.
TEST(FlashBwdTailSplit, PartsAddToReference) {
  SKIP_WITHOUT_GPU();
  int dev = 0, sms = 0;
  ck(cudaGetDevice(&dev), "cudaGetDevice");
  ck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "sms");
  const bool hopper = hopper_kernels_run();
  int split_runs = 0, span_runs = 0, input_split_runs = 0;
  for (int limit : {5, 4, 0}) {
    const GridLimit grid(limit, 0);
    for (DType dt : {DType::BF16, DType::F16})
      for (int64_t D : {64, 128}) {
        if (limit == 0 && dt != DType::BF16) continue;
        const std::string tag = std::string(dtype_name(dt)) + "_d" + std::to_string(D) + "_grid" +
                                std::to_string(limit);
        const Case cs[] = {
            {dt, D, 1, 700, 700, 2, 128, 128, false, 0, 0, MaskKind::Dense, Layout::Contiguous,
             1.0, false, tag + "_tail2"},
            {dt, D, 2, 600, 900, 1, 128, 128, false, 0, 0, MaskKind::Dense, Layout::Dilated,
             3.0, false, tag + "_tail1_ragged"},
            {dt, D, 1, D == 128 ? 2560 : 4096, 896, 1, 128, 128, false, 0, 0, MaskKind::Dense,
             Layout::Contiguous, 1.0, false, tag + "_spans"}};
        for (const Case& c : cs)
          for (bool input_dtype : {false, true}) {
            const bool spans_case = c.Nq > 1000;
            if ((limit == 4) != spans_case) continue;
            if (input_dtype && (limit == 0 || c.B != 1)) continue;
            SCOPED_TRACE(c.name + (input_dtype ? "_dkv_input_dtype" : "_dkv_fp32"));
            check_backward(c, std::random_device{}(), nullptr, input_dtype);
            if (!hopper) continue;
            const int64_t works = (c.Nk + 127) / 128 * c.H * c.B;
            const int64_t tiles = (c.Nq + (D == 128 ? 79 : 127)) / (D == 128 ? 80 : 128);
            const BackwardTailSplit t =
                backward_tail_split(works, limit > 0 ? limit : sms, tiles);
            const int64_t want = t.launch_items();
            EXPECT_EQ(cuda::backward_last_tail_parts(), want);
            if (want > 0) ++split_runs;
            if (want > 0 && t.spans > 0) ++span_runs;
            if (want > 0 && input_dtype) ++input_split_runs;
          }
      }
  }
  if (hopper) EXPECT_GE(split_runs, 16);
  if (hopper) EXPECT_EQ(span_runs, 8);
  if (hopper) EXPECT_GE(input_split_runs, 6);
}

// The Hopper backward's walk starts. Staggered walks (mode 1: each CTA starting at a query tile
// that grows with its key block, wrapping around; a measurement mode now) forced on for every
// kind of call (dense, causal, sparse, ragged, empty rows), and at head dim 128 with query parts.
// The first tile (mode 0) forced on a head-dim-64 non-causal call, which takes phased walks by
// default. The phased walks (mode 2: each work starting at a phase from its index; the default
// over scattered rows and at head dim 64 without causality) at both head dims, with query parts,
// causality and ragged lengths, also on a grid of 5 CTAs.
// Elsewhere the portable kernels run the same checks.
TEST(FlashRotate, StaggeredWalksMatchReference) {
  SKIP_WITHOUT_GPU();
  struct Run {
    const char* rotate;
    int parts;
    Case c;
  };
  const Run runs[] = {
      {"1", 1, {DType::BF16, 64, 2, 1100, 1250, 2, 128, 128, false, 0, 0, MaskKind::Dense,
                Layout::Contiguous, 1.0, false, "bf16_d64_rotate_dense_ragged"}},
      {"1", 1, {DType::F16, 64, 1, 1000, 900, 2, 128, 128, true, 0, 0, MaskKind::Dense,
                Layout::Contiguous, 1.0, false, "f16_d64_rotate_dense_causal"}},
      {"1", 1, {DType::BF16, 64, 1, 1000, 1000, 2, 256, 128, true, 0, 0, MaskKind::Sparse,
                Layout::Dilated, 3.0, false, "bf16_d64_rotate_causal_sparse"}},
      {"1", 1, {DType::BF16, 64, 1, 900, 700, 3, 128, 128, false, 0, 0, MaskKind::Sparse,
                Layout::Contiguous, 1.0, false, "bf16_d64_rotate_sparse"}},
      {"1", 3, {DType::BF16, 128, 1, 1000, 1000, 2, 256, 128, true, 0, 0, MaskKind::Sparse,
                Layout::Dilated, 3.0, false, "bf16_d128_rotate_parts3_causal_sparse"}},
      {"0", 1, {DType::BF16, 64, 1, 1100, 1000, 2, 128, 128, false, 0, 0, MaskKind::Dense,
                Layout::Contiguous, 1.0, false, "bf16_d64_norotate_dense"}},
      // Phased walks (mode 2, taken by default over scattered rows), forced on for the others.
      {"2", 1, {DType::BF16, 128, 1, 1000, 1100, 2, 128, 128, false, 0, 0, MaskKind::Sparse,
                Layout::Contiguous, 1.0, false, "bf16_d128_phase_sparse_ragged"}},
      {"2", 3, {DType::F16, 128, 2, 1000, 1000, 2, 256, 128, true, 0, 0, MaskKind::Sparse,
                Layout::Dilated, 3.0, false, "f16_d128_phase_parts3_causal_sparse"}},
      {"2", 1, {DType::BF16, 64, 1, 900, 700, 3, 128, 128, false, 0, 0, MaskKind::Sparse,
                Layout::Contiguous, 1.0, false, "bf16_d64_phase_sparse"}},
      {"2", 1, {DType::BF16, 128, 1, 1100, 1250, 2, 128, 128, false, 0, 0, MaskKind::Dense,
                Layout::Contiguous, 1.0, false, "bf16_d128_phase_dense_ragged"}},
      {"2", 1, {DType::F16, 64, 1, 1000, 900, 2, 128, 128, true, 0, 0, MaskKind::Dense,
                Layout::Contiguous, 1.0, false, "f16_d64_phase_dense_causal"}}};
  auto check = [](const Run& r) {
    const ScopedEnv rotation("LONGATTN_SM90_BWD_ROTATE", r.rotate);
    const ScopedEnv split("LONGATTN_SM90_QSPLIT", parts_value(r.parts > 1 ? r.parts : 0));
    check_backward(r.c, std::random_device{}());
  };
  for (const Run& r : runs) {
    SCOPED_TRACE(r.c.name);
    check(r);
  }
  // Phased walks on a grid of 5 persistent CTAs: many works per CTA, phases repeating each
  // round of the grid, query parts waiting on parts other CTAs hold.
  const GridLimit limit(5, 0);
  for (const Run& r : runs) {
    if (std::string(r.rotate) != "2" || r.c.mask != MaskKind::Sparse) continue;
    SCOPED_TRACE(r.c.name + "_grid5");
    check(r);
  }
}

// Small cases for compute-sanitizer (memcheck, racecheck): forward and the backward modes per
// path (fp32 FMA; bf16 with 64- and 128-key CTAs, atomic and query-stationary dQ, query parts).
TEST(FlashSmall, SanitizerCases) {
  SKIP_WITHOUT_GPU();
  for (DType dt : {DType::BF16, DType::F32})
    for (int64_t block : {64, 128})
    for (int variant = 0; variant < 3; ++variant) {
      // 0: atomic dQ, 1: query-stationary dQ, 2: atomic dQ with the query range in 3 parts
      // (some of them empty) on the Hopper path (head dim 128).
      const bool det = variant == 1;
      const int64_t D = variant == 2 ? 128 : 64;
      const ScopedEnv split("LONGATTN_SM90_QSPLIT", parts_value(variant == 2 ? 3 : 0));
      Case c{dt, D, 1, 150, 130, 1, block, block, true, 20, 0, MaskKind::Sparse,
             Layout::Contiguous, 1.0, det, std::string("small_") + dtype_name(dt)};
      FwdRun run;
      run_forward(c, run, 99);
      // A backward on the same inputs, checked for finiteness only (accuracy is above).
      Mirrored o = make_mirrored(Layout::Contiguous, dt, 1, c.Nq, 1, D, 5, 1.0);
      copy_view(o.hview, run.ref_o.view());
      o.upload();
      Mirrored lse = make_mirrored(Layout::Contiguous, DType::F32, 1, c.Nq, 1, 1, 0, 1.0);
      copy_view(lse.hview, run.ref_lse.view());
      lse.upload();
      Mirrored dout = make_mirrored(Layout::Contiguous, dt, 1, c.Nq, 1, D, 6, 1.0);
      Mirrored dq = make_mirrored(Layout::Contiguous, DType::F32, 1, c.Nq, 1, D, 7, 1.0);
      Mirrored dk = make_mirrored(Layout::Contiguous, DType::F32, 1, c.Nk, 1, D, 8, 1.0);
      Mirrored dv = make_mirrored(Layout::Contiguous, DType::F32, 1, c.Nk, 1, D, 9, 1.0);
      AttnBwdParams p;
      p.q = run.q.dview;
      p.k = run.k.dview;
      p.v = run.v.dview;
      p.o = o.dview;
      p.d_o = dout.dview;
      p.lse = lse.dview;
      p.dq = dq.dview;
      p.dk = dk.dview;
      p.dv = dv.dview;
      p.mask = run.mask.dev;
      p.mask_t = run.mask.dev_t;
      p.causal = true;
      p.q_offset = 20;
      p.deterministic = det;
      cuda::flash_backward(p, nullptr);
      ck(cudaDeviceSynchronize(), "flash_backward");
      dq.download();
      dk.download();
      EXPECT_TRUE(compare(dq.hview, dq.hview).finite);
      EXPECT_TRUE(compare(dk.hview, dk.hview).finite);
    }
}

// Deterministic mode gives bitwise identical gradients on repeated runs; gradients in the
// input dtype (bf16) and an fp32 output for bf16 inputs are accepted.
TEST(FlashKernels, DeterministicBackwardIsBitwiseReproducible) {
  SKIP_WITHOUT_GPU();
  const int64_t B = 1, N = 333, H = 2, D = 64;
  Case c{DType::BF16, D, B, N, N, H, 128, 128, true, 0, 0, MaskKind::Dense,
         Layout::Contiguous, 1.0, true, "det"};
  FwdRun run;
  run_forward(c, run, std::random_device{}());
  Mirrored o = make_mirrored(Layout::Contiguous, DType::BF16, B, N, H, D, 1, 1.0);
  copy_view(o.hview, run.ref_o.view());
  o.upload();
  Mirrored lse = make_mirrored(Layout::Contiguous, DType::F32, B, N, H, 1, 0, 1.0);
  copy_view(lse.hview, run.ref_lse.view());
  lse.upload();
  Mirrored dout = make_mirrored(Layout::Contiguous, DType::BF16, B, N, H, D, 2, 1.0);
  std::vector<std::vector<std::byte>> results;
  for (DType gt : {DType::F32, DType::F32, DType::BF16, DType::BF16}) {
    Mirrored dq = make_mirrored(Layout::Contiguous, gt, B, N, H, D, 3, 1.0);
    Mirrored dk = make_mirrored(Layout::Contiguous, gt, B, N, H, D, 4, 1.0);
    Mirrored dv = make_mirrored(Layout::Contiguous, gt, B, N, H, D, 5, 1.0);
    AttnBwdParams p;
    p.q = run.q.dview;
    p.k = run.k.dview;
    p.v = run.v.dview;
    p.o = o.dview;
    p.d_o = dout.dview;
    p.lse = lse.dview;
    p.dq = dq.dview;
    p.dk = dk.dview;
    p.dv = dv.dview;
    p.mask = run.mask.dev;
    p.mask_t = run.mask.dev_t;
    p.causal = true;
    p.deterministic = true;
    cuda::flash_backward(p, nullptr);
    ck(cudaDeviceSynchronize(), "flash_backward");
    dq.download();
    dk.download();
    dv.download();
    std::vector<std::byte> all;
    for (const Mirrored* m : {&dq, &dk, &dv}) {
      const auto* s = static_cast<const std::byte*>(m->host.data());
      all.insert(all.end(), s, s + m->host.bytes());
    }
    results.push_back(std::move(all));
  }
  EXPECT_TRUE(results[0] == results[1]) << "fp32 gradients differ between identical runs";
  EXPECT_TRUE(results[2] == results[3]) << "bf16 gradients differ between identical runs";
}

TEST(FlashKernels, Fp32OutputForBf16Inputs) {
  SKIP_WITHOUT_GPU();
  const int64_t B = 1, N = 190, H = 2, D = 128;
  Mirrored q = make_mirrored(Layout::Contiguous, DType::BF16, B, N, H, D, 11, 1.0);
  Mirrored k = make_mirrored(Layout::Contiguous, DType::BF16, B, N, H, D, 12, 1.0);
  Mirrored v = make_mirrored(Layout::Contiguous, DType::BF16, B, N, H, D, 13, 1.0);
  Mirrored o = make_mirrored(Layout::Contiguous, DType::F32, B, N, H, D, 0, 1.0, true);
  Mirrored lse = make_mirrored(Layout::Contiguous, DType::F32, B, N, H, 1, 0, 1.0, true);
  const MaskGeometry g{N, N, 128, 128, true, 0, 0};
  MaskPair m = make_mask(MaskKind::Dense, g, 1);
  AttnFwdParams p;
  p.q = q.dview;
  p.k = k.dview;
  p.v = v.dview;
  p.o = o.dview;
  p.lse = lse.dview;
  p.mask = m.dev;
  p.causal = true;
  cuda::flash_forward(p, nullptr);
  ck(cudaDeviceSynchronize(), "flash_forward");
  o.download();
  const Tensor q64 = to_f64(q.hview), k64 = to_f64(k.hview), v64 = to_f64(v.hview);
  const auto ref =
      testing::naive_attention(q64.view(), k64.view(), v64.view(), allowed_of(m.host, g));
  const auto naive = testing::naive_attention(q64.view(), k64.view(), v64.view(),
                                              allowed_of(m.host, g), 0.0, DType::BF16);
  const double naive_err = compare(naive.o.view(), ref.o.view()).max_abs;
  EXPECT_LE(compare(o.hview, ref.o.view()).max_abs, testing::tolerance_for(DType::BF16, naive_err));
}

// On compute capability 9.0 the Hopper kernel takes fp16/bf16, head dim 64/128, 128-blocks and
// aligned rows (and LONGATTN_FLASH_KERNELS=portable sends everything to the portable kernel,
// which the ctest entry gpu_kernels_portable uses to run this whole suite through it).
TEST(FlashKernels, KernelChoice) {
  SKIP_WITHOUT_GPU();
  const bool hopper = hopper_kernels_run();
  for (DType dt : {DType::BF16, DType::F16, DType::F32})
    for (int64_t D : {32, 64, 128, 256})
      for (int64_t block : {64, 128}) {
        Case c{dt, D, 1, 300, 300, 1, block, block, false, 0, 0, MaskKind::Dense,
               Layout::Contiguous, 1.0, false, "choice"};
        Mirrored q = make_mirrored(c.layout, dt, 1, 300, 1, D, 1, 1.0);
        Mirrored o = make_mirrored(c.layout, dt, 1, 300, 1, D, 0, 1.0, true);
        Mirrored lse = make_mirrored(c.layout, DType::F32, 1, 300, 1, 1, 0, 1.0, true);
        const MaskGeometry g{300, 300, block, block, false, 0, 0};
        MaskPair mp = make_mask(MaskKind::Dense, g, 1);
        AttnFwdParams p;
        p.q = p.k = p.v = q.dview;
        p.o = o.dview;
        p.lse = lse.dview;
        p.mask = mp.dev;
        const std::string want = dt == DType::F32 ? "fp32"
                                 : (hopper && (D == 64 || D == 128) && block == 128) ? "sm90"
                                                                                     : "portable";
        // A dense mask lists every visible key block: head dim 64 takes the 192-row tiles, head
        // dim 128 the 192-key tiles.
        const std::string want_fwd = want == "sm90" ? "sm90-wide" : want;
        EXPECT_EQ(cuda::flash_forward_kernel(p), want_fwd)
            << dtype_name(dt) << " d=" << D << " block=" << block;
        if (want_fwd == "sm90-wide") {
          // Not when asked not to, nor when the call sees blocks the mask does not list: the
          // mask is causal from diagonal 0 and the call's queries sit 200 positions later.
          setenv("LONGATTN_SM90_FWD_WIDE", "0", 1);
          EXPECT_EQ(cuda::flash_forward_kernel(p), "sm90");
          unsetenv("LONGATTN_SM90_FWD_WIDE");
          MaskPair causal =
              make_mask(MaskKind::Dense, MaskGeometry{300, 300, 128, 128, true, 0, 0}, 1);
          AttnFwdParams pc = p;
          pc.mask = causal.dev;
          pc.causal = true;
          EXPECT_EQ(cuda::flash_forward_kernel(pc), "sm90-wide");
          pc.q_offset = 200;
          EXPECT_EQ(cuda::flash_forward_kernel(pc), "sm90");
          pc.causal = false;
          pc.q_offset = 0;
          EXPECT_EQ(cuda::flash_forward_kernel(pc), "sm90");
        }
        // Backward: the same, and only with an fp32 dq accumulated by atomics.
        Mirrored dq = make_mirrored(c.layout, DType::F32, 1, 300, 1, D, 0, 1.0, true);
        AttnBwdParams pb;
        pb.q = pb.k = pb.v = pb.o = pb.d_o = q.dview;
        pb.lse = lse.dview;
        pb.dq = pb.dk = pb.dv = dq.dview;
        pb.mask = mp.dev;
        pb.mask_t = mp.dev_t;
        // A dense mask lists every visible key block: head dim 128 takes the 80-query tiles,
        // head dim 64 the 128-query tiles.
        const std::string want_bwd = want != "sm90" ? want
                                     : D == 128     ? "sm90-m80"
                                     : D == 64      ? "sm90-m128"
                                                    : want;
        EXPECT_EQ(cuda::flash_backward_kernel(pb), want_bwd)
            << "backward " << dtype_name(dt) << " d=" << D << " block=" << block;
        if (want_bwd == "sm90-m80" || want_bwd == "sm90-m128") {
          // Not when asked not to, nor when the call sees blocks the mask does not list.
          {
            const ScopedEnv off(D == 128 ? "LONGATTN_SM90_BWD_M80" : "LONGATTN_SM90_BWD_M128",
                                "0");
            EXPECT_EQ(cuda::flash_backward_kernel(pb), "sm90");
          }
          MaskPair causal =
              make_mask(MaskKind::Dense, MaskGeometry{300, 300, 128, 128, true, 0, 0}, 1);
          AttnBwdParams pc = pb;
          pc.mask = causal.dev;
          pc.mask_t = causal.dev_t;
          pc.causal = true;
          EXPECT_EQ(cuda::flash_backward_kernel(pc), want_bwd);
          // (Head dim 64 then walks the mask's lists in 128-query tiles.)
          const std::string lists = D == 64 ? "sm90-m128-lists" : "sm90";
          pc.q_offset = 200;
          EXPECT_EQ(cuda::flash_backward_kernel(pc), lists);
          pc.causal = false;
          pc.q_offset = 0;
          EXPECT_EQ(cuda::flash_backward_kernel(pc), lists);
          const ScopedEnv no_lists("LONGATTN_SM90_BWD_M128_LISTS", "0");
          EXPECT_EQ(cuda::flash_backward_kernel(pc), "sm90");
        }
        pb.deterministic = true;
        if (dt != DType::F32) EXPECT_EQ(cuda::flash_backward_kernel(pb), "portable");
      }
}

TEST(FlashKernels, RejectsWhatItCannotRun) {
  SKIP_WITHOUT_GPU();
  EXPECT_TRUE(cuda::flash_supports(DType::BF16, 128));
  EXPECT_TRUE(cuda::flash_supports(DType::F32, 256));
  EXPECT_FALSE(cuda::flash_supports(DType::F16, 48));
  EXPECT_FALSE(cuda::flash_supports(DType::F64, 64));
  const int64_t N = 64, D = 64;
  Mirrored q = make_mirrored(Layout::Contiguous, DType::F16, 1, N, 1, D, 1, 1.0);
  Mirrored o = make_mirrored(Layout::Contiguous, DType::F16, 1, N, 1, D, 1, 1.0);
  Mirrored lse = make_mirrored(Layout::Contiguous, DType::F32, 1, N, 1, 1, 1, 1.0);
  MaskPair m32 = make_mask(MaskKind::Dense, MaskGeometry{N, N, 32, 32, false, 0, 0}, 1);
  AttnFwdParams p;
  p.q = p.k = p.v = q.dview;
  p.o = o.dview;
  p.lse = lse.dview;
  p.mask = m32.dev;
  EXPECT_THROW(cuda::flash_forward(p, nullptr), InvalidArgument);  // block 32
  MaskPair m64 = make_mask(MaskKind::Dense, MaskGeometry{N, N, 64, 64, false, 0, 0}, 1);
  p.mask = m64.dev;
  Mirrored lse64 = make_mirrored(Layout::Contiguous, DType::F64, 1, N, 1, 1, 1, 1.0);
  p.lse = lse64.dview;
  EXPECT_THROW(cuda::flash_forward(p, nullptr), InvalidArgument);  // fp64 lse
  p.lse = lse.dview;
  Mirrored q48 = make_mirrored(Layout::Contiguous, DType::F16, 1, N, 1, 48, 1, 1.0);
  Mirrored o48 = make_mirrored(Layout::Contiguous, DType::F16, 1, N, 1, 48, 1, 1.0);
  p.q = p.k = p.v = q48.dview;
  p.o = o48.dview;
  EXPECT_THROW(cuda::flash_forward(p, nullptr), InvalidArgument);  // head dim 48
}

// A bf16 call over 64-row mask blocks on an sm_90 GPU runs the portable kernels, and the
// process logs once that the Hopper kernels take 128-multiples.
TEST(FlashPortableBlocks, WarnedOnceOnHopper) {
  SKIP_WITHOUT_GPU();
  MaskPair big = make_mask(MaskKind::Dense, MaskGeometry{256, 256, 128, 128, false, 0, 0}, 1);
  MaskPair small = make_mask(MaskKind::Dense, MaskGeometry{256, 256, 64, 64, false, 0, 0}, 1);
  const Bf16Call call(256, 256, 64);
  const bool hopper = cuda::flash_forward_kernel(call.params(big.dev)).rfind("sm90", 0) == 0;
  const AttnFwdParams p = call.params(small.dev);
  EXPECT_EQ(cuda::flash_forward_kernel(p), "portable");
  cuda::flash_forward(p, nullptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(cuda::portable_blocks_warned(), hopper);
}

}  // namespace
}  // namespace longattn
