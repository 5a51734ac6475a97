// The CUDA backend against the CPU reference backend (label gpu; every test skips without a
// GPU): element-wise ops and merge on strided views, host/device transfers, cuBLAS gemm, device
// block masks against the CPU pattern generator, top-k masks, out-of-memory reporting, and every
// attention variant forward and backward through both backends.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cctype>
#include <cstdlib>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "attention/head_groups.hpp"
#include "attention/patterns.hpp"
#include "attention/variant.hpp"
#include "common/naive_dilated.hpp"
#include "common/reference.hpp"
#include "common/scoped_env.hpp"
#include "kernels/backend.hpp"
#include "kernels/cuda/cuda_backend.hpp"
#include "kernels/cuda/flash_attention.hpp"
#include "kernels/cuda/mask_build.hpp"
#include "runtime/error.hpp"

namespace longattn {
namespace {

using testing::ScopedEnv;

#define SKIP_WITHOUT_GPU()                                                         \
  do {                                                                             \
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device in this machine"; \
  } while (0)

constexpr double kInf = std::numeric_limits<double>::infinity();

// Unit roundoff of a dtype (half an ulp at 1).
double unit_roundoff(DType t) {
  switch (t) {
    case DType::F64: return 0x1.0p-53;
    case DType::F32: return 0x1.0p-24;
    case DType::F16: return 0x1.0p-11;
    case DType::BF16: return 0x1.0p-8;
  }
  return 0.0;
}

// A strided sub-view inside a padded parent, with identical layouts on the host and on the
// device: rows n = 1 + step * i of the parent, heads 1..H, the first D of Dp columns.
struct Padded {
  Tensor host;
  DeviceTensor dev;
  TensorView hview, dview;
};

TensorView sub_view(const TensorView& parent, int64_t N, int64_t H, int64_t D, int64_t step) {
  TensorView v = parent.rows(1, N, step).heads(1, H);
  v.D = D;
  return v;
}

Padded make_padded(Backend& gpu, DType dt, int64_t B, int64_t N, int64_t H, int64_t D,
                   uint64_t seed, int64_t step = 2) {
  Padded p;
  const int64_t Np = 1 + step * N + 2, Hp = H + 2, Dp = D + (D > 1 ? 5 : 1);
  p.host = Tensor::randn(dt, B, Np, Hp, Dp, seed);
  p.dev = DeviceTensor(gpu, dt, B, Np, Hp, Dp);
  gpu.upload(p.dev.view(), p.host.view());
  p.hview = sub_view(p.host.view(), N, H, D, step);
  p.dview = sub_view(p.dev.view(), N, H, D, step);
  return p;
}

// A random [B, N, H, D] tensor on the host and the device: contiguous (16-byte rows: the vector
// and TMA paths), or with pad a view of odd rows of a larger parent (make_padded).
Padded make_input(Backend& gpu, DType dt, int64_t B, int64_t N, int64_t H, int64_t D,
                  uint64_t seed, bool pad) {
  if (pad) return make_padded(gpu, dt, B, N, H, D, seed, 2);
  Padded x;
  x.host = Tensor::randn(dt, B, N, H, D, seed);
  x.dev = DeviceTensor(gpu, dt, B, N, H, D);
  gpu.upload(x.dev.view(), x.host.view());
  x.hview = x.host.view();
  x.dview = x.dev.view();
  return x;
}

// A backward's contiguous inputs q, k, v, o, d_o (seeds seed + 1..5) and its lse, and the
// geometry of an N x N mask of 128 blocks.
struct BwdInputs {
  Padded q, k, v, o, d_o;
  DeviceTensor lse;
};
BwdInputs make_bwd_inputs(Backend& gpu, DType dt, int64_t B, int64_t N, int64_t H, int64_t D,
                          uint64_t seed) {
  BwdInputs in;
  Padded* const all[] = {&in.q, &in.k, &in.v, &in.o, &in.d_o};
  for (int i = 0; i < 5; ++i) *all[i] = make_input(gpu, dt, B, N, H, D, seed + 1 + i, false);
  in.lse = DeviceTensor(gpu, DType::F32, B, N, H, 1);
  return in;
}
MaskGeometry square_geometry(int64_t N, bool causal) {
  MaskGeometry geo;
  geo.nq = geo.nk = N;
  geo.block_q = geo.block_k = 128;
  geo.causal = causal;
  return geo;
}

// Whether the backend's flash calls take the Hopper kernels where they accept the call: a build
// with them, an sm_90 device, and LONGATTN_FLASH_KERNELS not "portable".
bool hopper_kernels_on() {
#if LONGATTN_HAVE_SM90
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess)
    return false;
  const char* env = std::getenv("LONGATTN_FLASH_KERNELS");
  return major == 9 && minor == 0 && !(env && std::string(env) == "portable");
#else
  return false;
#endif
}

// The whole device parent back on the host, as fp64.
Tensor download_all(Backend& gpu, const Padded& p) {
  const TensorView v = p.dev.view();
  Tensor out(DType::F64, v.B, v.N, v.H, v.D);
  gpu.download(out.view(), v);
  return out;
}

const DType kLowDtypes[] = {DType::F32, DType::F16, DType::BF16};

// ---- element-wise ops ---------------------------------------------------------------------

// Both backends compute in fp64 and round once to the destination dtype, so results are
// bit-identical; the padding around the strided view must stay untouched on both.
TEST(CudaElementwise, FillScaleAxpyCopyMatchCpuOnStridedViews) {
  SKIP_WITHOUT_GPU();
  auto gpu = make_cuda_backend();
  auto cpu = make_cpu_backend();
  const int64_t B = 2, N = 37, H = 3, D = 40;
  uint64_t seed = 100;
  for (DType dt : kLowDtypes) {
    SCOPED_TRACE(dtype_name(dt));
    {
      Padded t = make_padded(*gpu, dt, B, N, H, D, ++seed);
      cpu->fill(t.hview, -1.4375);
      gpu->fill(t.dview, -1.4375);
      EXPECT_EQ(compare(download_all(*gpu, t).view(), t.host.view()).max_abs, 0.0) << "fill";
    }
    {
      Padded t = make_padded(*gpu, dt, B, N, H, D, ++seed);
      cpu->scale(t.hview, 0.3);
      gpu->scale(t.dview, 0.3);
      EXPECT_EQ(compare(download_all(*gpu, t).view(), t.host.view()).max_abs, 0.0) << "scale";
    }
    for (DType src_dt : kLowDtypes) {
      SCOPED_TRACE(std::string("src ") + dtype_name(src_dt));
      Padded dst = make_padded(*gpu, dt, B, N, H, D, ++seed);
      Padded src = make_padded(*gpu, src_dt, B, N, H, D, ++seed, 3);
      cpu->axpy(dst.hview, -0.7, src.hview);
      gpu->axpy(dst.dview, -0.7, src.dview);
      EXPECT_EQ(compare(download_all(*gpu, dst).view(), dst.host.view()).max_abs, 0.0) << "axpy";
      Padded dst2 = make_padded(*gpu, dt, B, N, H, D, ++seed);
      cpu->copy(dst2.hview, src.hview);
      gpu->copy(dst2.dview, src.dview);
      EXPECT_EQ(compare(download_all(*gpu, dst2).view(), dst2.host.view()).max_abs, 0.0)
          << "copy";
      Padded dst3 = make_padded(*gpu, dt, B, N, H, D, ++seed);
      cpu->copy_scaled(dst3.hview, 1.0 / 3.0, src.hview);
      gpu->copy_scaled(dst3.dview, 1.0 / 3.0, src.dview);
      EXPECT_EQ(compare(download_all(*gpu, dst3).view(), dst3.host.view()).max_abs, 0.0)
          << "copy_scaled";
    }
  }
}

TEST(CudaElementwise, ContiguousFastPathsMatchCpu) {
  SKIP_WITHOUT_GPU();
  auto gpu = make_cuda_backend();
  for (DType dt : kLowDtypes) {
    Tensor a = Tensor::randn(dt, 2, 33, 2, 16, 7);
    DeviceTensor da(*gpu, dt, 2, 33, 2, 16), db(*gpu, dt, 2, 33, 2, 16);
    gpu->upload(da.view(), a.view());
    gpu->copy(db.view(), da.view());  // same dtype, contiguous: a device memcpy
    Tensor back(dt, 2, 33, 2, 16);
    gpu->download(back.view(), db.view());
    EXPECT_EQ(compare(back.view(), a.view()).max_abs, 0.0) << dtype_name(dt);
    gpu->fill(db.view(), 0.0);  // contiguous zero: a memset
    gpu->download(back.view(), db.view());
    EXPECT_EQ(compare(back.view(), Tensor::zeros(dt, 2, 33, 2, 16).view()).max_abs, 0.0);
  }
}

// Whole contiguous tensors go through the four-element vector kernels (a multiple of 4
// elements, aligned), the rest through the row kernels: both bit-identical to the CPU backend,
// every dtype pair, and nothing written past the tensor.
TEST(CudaElementwise, FlatKernelsMatchCpuAndFallBackWhenUnaligned) {
  SKIP_WITHOUT_GPU();
  auto gpu = make_cuda_backend();
  auto cpu = make_cpu_backend();
  uint64_t seed = 900;
  // {N, offset, row stride}: 4096 elements aligned (vector path), 4095 (a remainder: row
  // path), 4096 starting one element into the buffer (misaligned: row path), and rows 8
  // elements apart (strided, aligned: the row-quad path of copy and axpy).
  const int64_t shapes[4][3] = {{1024, 0, 4}, {1023, 0, 4}, {1024, 1, 4}, {512, 0, 8}};
  for (const auto& sh : shapes) {
    const int64_t N = sh[0], off = sh[1], stride = sh[2];
    const int64_t total = N * stride + off + 3;  // [1, N, 1, 4] at `off`
    SCOPED_TRACE("N " + std::to_string(N) + " offset " + std::to_string(off) + " stride " +
                 std::to_string(stride));
    for (DType dt : kLowDtypes) {
      for (DType src_dt : kLowDtypes) {
        SCOPED_TRACE(std::string(dtype_name(dt)) + " <- " + dtype_name(src_dt));
        // Flat buffers of `total` elements viewed as [1, N, 1, 4] from element `off`.
        auto flat = [&](DType t, uint64_t sd, Tensor& host, DeviceTensor& dev) {
          host = Tensor::randn(t, 1, total, 1, 1, sd);
          dev = DeviceTensor(*gpu, t, 1, total, 1, 1);
          gpu->upload(dev.view(), host.view());
        };
        auto as4 = [&](const TensorView& whole) {
          TensorView v = whole;
          v.data = static_cast<char*>(whole.data) + off * dtype_size(whole.dtype);
          v.N = N;
          v.D = 4;
          v.sd = 1;
          v.sh = 4;
          v.sn = stride;
          v.sb = stride * N;
          return v;
        };
        Tensor hs, hd;
        DeviceTensor ds, dd;
        flat(src_dt, ++seed, hs, ds);
        const char* ops[4] = {"scale", "axpy", "copy", "copy_scaled"};
        for (int op = 0; op < 4; ++op) {
          flat(dt, ++seed, hd, dd);
          const TensorView hv = as4(hd.view()), dv = as4(dd.view());
          const TensorView hsv = as4(hs.view()), dsv = as4(ds.view());
          switch (op) {
            case 0: cpu->scale(hv, -0.7); gpu->scale(dv, -0.7); break;
            case 1: cpu->axpy(hv, 0.3, hsv); gpu->axpy(dv, 0.3, dsv); break;
            case 2: cpu->copy(hv, hsv); gpu->copy(dv, dsv); break;
            default: cpu->copy_scaled(hv, 1.0 / 3.0, hsv); gpu->copy_scaled(dv, 1.0 / 3.0, dsv);
          }
          Tensor back(DType::F64, 1, total, 1, 1);
          gpu->download(back.view(), dd.view());
          EXPECT_EQ(compare(back.view(), hd.view()).max_abs, 0.0) << ops[op];
        }
      }
    }
  }
}

TEST(CudaElementwise, MergeMatchesCpuIncludingEmptySides) {
  SKIP_WITHOUT_GPU();
  auto gpu = make_cuda_backend();
  auto cpu = make_cpu_backend();
  const int64_t B = 2, N = 29, H = 3, D = 24;
  uint64_t seed = 500;
  for (DType acc_dt : kLowDtypes)
    for (DType part_dt : kLowDtypes) {
      SCOPED_TRACE(std::string(dtype_name(acc_dt)) + " <- " + dtype_name(part_dt));
      Padded o_acc = make_padded(*gpu, acc_dt, B, N, H, D, ++seed);
      Padded o_part = make_padded(*gpu, part_dt, B, N, H, D, ++seed, 1);
      Padded l_acc = make_padded(*gpu, DType::F32, B, N, H, 1, ++seed);
      Padded l_part = make_padded(*gpu, DType::F32, B, N, H, 1, ++seed, 3);
      // Empty sides: acc empty on every 5th row, part on every 7th, both on row 0.
      for (int64_t b = 0; b < B; ++b)
        for (int64_t n = 0; n < N; ++n)
          for (int64_t h = 0; h < H; ++h) {
            store(l_acc.hview, b, n, h, 0, 3.0 * load(l_acc.hview, b, n, h, 0));
            if (n % 5 == 0) store(l_acc.hview, b, n, h, 0, -kInf);
            if (n % 7 == 0) store(l_part.hview, b, n, h, 0, -kInf);
          }
      gpu->upload(l_acc.dev.view(), l_acc.host.view());
      gpu->upload(l_part.dev.view(), l_part.host.view());
      cpu->merge(o_acc.hview, l_acc.hview, o_part.hview, l_part.hview);
      gpu->merge(o_acc.dview, l_acc.dview, o_part.dview, l_part.dview);
      // Device exp/log may differ from the host's in the last fp64 bit: an ulp of the dtype.
      const ErrorStats eo = compare(download_all(*gpu, o_acc).view(), o_acc.host.view());
      EXPECT_TRUE(eo.finite);
      EXPECT_LE(eo.max_abs, 4 * unit_roundoff(acc_dt) * std::max(1.0, eo.max_ref));
      const ErrorStats el = compare(download_all(*gpu, l_acc).view(), l_acc.host.view());
      EXPECT_TRUE(el.finite);  // -inf rows matched exactly, no NaN
      EXPECT_LE(el.max_abs, 4 * unit_roundoff(DType::F32) * std::max(1.0, el.max_ref));
    }
}

// Rows of unit element stride with D and the strides multiples of 4 take the vector merge (four
// rows a warp): whole tensors and a head slice of one, every dtype pair, empty sides, row counts
// that leave a warp partly idle; against the CPU backend as above.
TEST(CudaElementwise, MergeQuadPathMatchesCpu) {
  SKIP_WITHOUT_GPU();
  auto gpu = make_cuda_backend();
  auto cpu = make_cpu_backend();
  uint64_t seed = 700;
  struct Shape4 {
    int64_t B, N, H, D;
    bool head_slice;
  };
  for (const Shape4& sh : {Shape4{1, 37, 3, 128, false}, Shape4{2, 19, 4, 64, true},
                           Shape4{1, 5, 1, 8, false}}) {
    SCOPED_TRACE("D " + std::to_string(sh.D) + (sh.head_slice ? " head slice" : ""));
    for (DType acc_dt : kLowDtypes)
      for (DType part_dt : kLowDtypes) {
        SCOPED_TRACE(std::string(dtype_name(acc_dt)) + " <- " + dtype_name(part_dt));
        Tensor ha = Tensor::randn(acc_dt, sh.B, sh.N, sh.H, sh.D, ++seed);
        Tensor hp = Tensor::randn(part_dt, sh.B, sh.N, sh.H, sh.D, ++seed);
        Tensor la = Tensor::randn(DType::F32, sh.B, sh.N, sh.H, 1, ++seed);
        Tensor lp = Tensor::randn(DType::F32, sh.B, sh.N, sh.H, 1, ++seed);
        for (int64_t b = 0; b < sh.B; ++b)
          for (int64_t n = 0; n < sh.N; ++n)
            for (int64_t h = 0; h < sh.H; ++h) {
              store(la.view(), b, n, h, 0, 3.0 * load(la.view(), b, n, h, 0));
              if (n % 5 == 0) store(la.view(), b, n, h, 0, -kInf);
              if (n % 7 == 0) store(lp.view(), b, n, h, 0, -kInf);
            }
        DeviceTensor da(*gpu, acc_dt, sh.B, sh.N, sh.H, sh.D),
            dp(*gpu, part_dt, sh.B, sh.N, sh.H, sh.D), dla(*gpu, DType::F32, sh.B, sh.N, sh.H, 1),
            dlp(*gpu, DType::F32, sh.B, sh.N, sh.H, 1);
        gpu->upload(da.view(), ha.view());
        gpu->upload(dp.view(), hp.view());
        gpu->upload(dla.view(), la.view());
        gpu->upload(dlp.view(), lp.view());
        auto part = [&](const TensorView& v) { return sh.head_slice ? v.heads(1, sh.H - 2) : v; };
        cpu->merge(part(ha.view()), part(la.view()), part(hp.view()), part(lp.view()));
        gpu->merge(part(da.view()), part(dla.view()), part(dp.view()), part(dlp.view()));
        Tensor back(DType::F64, sh.B, sh.N, sh.H, sh.D), lback(DType::F64, sh.B, sh.N, sh.H, 1);
        gpu->download(back.view(), da.view());
        gpu->download(lback.view(), dla.view());
        // Device exp/log may differ from the host's in the last fp64 bit: an ulp of the dtype.
        const ErrorStats eo = compare(back.view(), ha.view());
        EXPECT_TRUE(eo.finite);
        EXPECT_LE(eo.max_abs, 4 * unit_roundoff(acc_dt) * std::max(1.0, eo.max_ref));
        const ErrorStats el = compare(lback.view(), la.view());
        EXPECT_TRUE(el.finite);
        EXPECT_LE(el.max_abs, 4 * unit_roundoff(DType::F32) * std::max(1.0, el.max_ref));
      }
  }
}

TEST(CudaElementwise, RandnIsDeterministicAndNormal) {
  SKIP_WITHOUT_GPU();
  auto be = make_cuda_backend();
  CudaBackend& gpu = as_cuda(*be);
  const int64_t B = 1, N = 4096, H = 4, D = 64;
  DeviceTensor a(gpu, DType::F32, B, N, H, D), b(gpu, DType::F32, B, N, H, D);
  gpu.randn(a.view(), 42);
  gpu.randn(b.view(), 42);
  Tensor ha(DType::F64, B, N, H, D), hb(DType::F64, B, N, H, D);
  gpu.download(ha.view(), a.view());
  gpu.download(hb.view(), b.view());
  EXPECT_EQ(compare(ha.view(), hb.view()).max_abs, 0.0);
  double sum = 0.0, sq = 0.0;
  const int64_t n = ha.numel();
  for (int64_t i = 0; i < n; ++i) {
    const double x = static_cast<const double*>(ha.data())[i];
    sum += x;
    sq += x * x;
  }
  const double mean = sum / n, var = sq / n - mean * mean;
  EXPECT_LT(std::fabs(mean), 5.0 / std::sqrt(static_cast<double>(n)));
  EXPECT_NEAR(var, 1.0, 0.02);
  gpu.randn(b.view(), 43);
  gpu.download(hb.view(), b.view());
  EXPECT_GT(compare(ha.view(), hb.view()).max_abs, 0.5);
}

// ---- transfers ----------------------------------------------------------------------------

TEST(CudaTransfer, UploadDownloadRoundTripEveryDtype) {
  SKIP_WITHOUT_GPU();
  auto gpu = make_cuda_backend();
  const DType all[] = {DType::F64, DType::F32, DType::F16, DType::BF16};
  const int64_t B = 2, N = 19, H = 3, D = 12;
  uint64_t seed = 900;
  for (DType host_dt : all)
    for (DType dev_dt : all) {
      SCOPED_TRACE(std::string(dtype_name(host_dt)) + " -> " + dtype_name(dev_dt));
      Tensor src = Tensor::randn(host_dt, B, N, H, D, ++seed);
      // Contiguous device tensor, then a strided one (the padded path).
      DeviceTensor dc(*gpu, dev_dt, B, N, H, D);
      gpu->upload(dc.view(), src.view());
      Tensor back(host_dt, B, N, H, D);
      gpu->download(back.view(), dc.view());
      Tensor expect = src.to(dev_dt).to(host_dt);  // the host's rounding rules
      EXPECT_EQ(compare(back.view(), expect.view()).max_abs, 0.0) << "contiguous";

      Padded ps = make_padded(*gpu, dev_dt, B, N, H, D, ++seed);
      gpu->upload(ps.dview, src.view());
      Tensor back2(DType::F64, B, N, H, D);
      gpu->download(back2.view(), ps.dview);
      EXPECT_EQ(compare(back2.view(), expect.view()).max_abs, 0.0) << "strided";
      // Strided host source and destination as well.
      Padded hs = make_padded(*gpu, host_dt, B, N, H, D, ++seed, 3);
      gpu->upload(dc.view(), hs.hview);
      Tensor back3(host_dt, B, N, H, D);
      gpu->download(back3.view(), dc.view());
      Tensor expect3(host_dt, B, N, H, D);
      expect3.copy_from(hs.hview);
      expect3 = expect3.to(dev_dt).to(host_dt);
      EXPECT_EQ(compare(back3.view(), expect3.view()).max_abs, 0.0) << "strided host";
    }
}

TEST(CudaTransfer, RejectsHostViewsWhereDeviceViewsBelong) {
  SKIP_WITHOUT_GPU();
  auto gpu = make_cuda_backend();
  Tensor h = Tensor::randn(DType::F32, 1, 4, 1, 8, 1);
  EXPECT_THROW(gpu->fill(h.view(), 1.0), InvalidArgument);
  DeviceTensor d(*gpu, DType::F32, 1, 4, 1, 8);
  EXPECT_THROW(gpu->upload(h.view(), d.view()), InvalidArgument);
  DeviceTensor wrong(*gpu, DType::F32, 1, 5, 1, 8);
  EXPECT_THROW(gpu->copy(d.view(), wrong.view()), InvalidArgument);
}

// ---- gemm ---------------------------------------------------------------------------------

struct GemmTypes {
  DType a, b, c;
};

TEST(CudaGemm, AllTransposeCombosMatchCpu) {
  SKIP_WITHOUT_GPU();
  auto gpu = make_cuda_backend();
  auto cpu = make_cpu_backend();
  const int64_t M = 37, N = 45, K = 70, pad = 3;
  const GemmTypes types[] = {{DType::F32, DType::F32, DType::F32},
                             {DType::BF16, DType::BF16, DType::F32},
                             {DType::F16, DType::F16, DType::F16},
                             {DType::BF16, DType::BF16, DType::BF16},
                             {DType::F32, DType::BF16, DType::F32},
                             {DType::F16, DType::F32, DType::BF16},
                             {DType::F64, DType::F64, DType::F64}};
  uint64_t seed = 1300;
  for (const auto& ty : types)
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        SCOPED_TRACE(std::string(dtype_name(ty.a)) + "," + dtype_name(ty.b) + "->" +
                     dtype_name(ty.c) + " ta=" + std::to_string(ta) + " tb=" + std::to_string(tb));
        const int64_t ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
        // Matrices as [1, rows, 1, ld] tensors whose last `pad` columns are padding.
        Tensor ha = Tensor::randn(ty.a, 1, ar, 1, ac + pad, ++seed);
        Tensor hb = Tensor::randn(ty.b, 1, br, 1, bc + pad, ++seed);
        Tensor hc = Tensor::randn(ty.c, 1, M, 1, N + pad, ++seed);
        DeviceTensor da(*gpu, ty.a, 1, ar, 1, ac + pad), db(*gpu, ty.b, 1, br, 1, bc + pad),
            dc(*gpu, ty.c, 1, M, 1, N + pad);
        gpu->upload(da.view(), ha.view());
        gpu->upload(db.view(), hb.view());
        gpu->upload(dc.view(), hc.view());
        auto mv = [](void* p, DType t, int64_t r, int64_t c, int64_t ld) {
          return MatrixView{p, t, r, c, ld};
        };
        const double alpha = 0.75, beta = -0.5;
        cpu->gemm(ta, tb, alpha, mv(ha.data(), ty.a, ar, ac, ac + pad),
                  mv(hb.data(), ty.b, br, bc, bc + pad), beta, mv(hc.data(), ty.c, M, N, N + pad));
        gpu->gemm(ta, tb, alpha, mv(da.data(), ty.a, ar, ac, ac + pad),
                  mv(db.data(), ty.b, br, bc, bc + pad), beta, mv(dc.data(), ty.c, M, N, N + pad));
        Tensor back(DType::F64, 1, M, 1, N + pad);
        gpu->download(back.view(), dc.view());
        const ErrorStats e = compare(back.view(), hc.view());
        // fp32 accumulation over K products (fp64 for fp64), then one rounding to C's dtype.
        const double acc_eps = ty.c == DType::F64 ? 1e-13 : 2e-6;
        const double tol = (2 * unit_roundoff(ty.c) + acc_eps) * std::max(1.0, e.max_ref) *
                           (ty.c == DType::F64 ? 1.0 : std::sqrt(static_cast<double>(K)) / 4);
        EXPECT_LE(e.max_abs, tol) << "max_ref " << e.max_ref;
      }
}

TEST(CudaGemm, RejectsMismatchedShapes) {
  SKIP_WITHOUT_GPU();
  auto gpu = make_cuda_backend();
  DeviceTensor a(*gpu, DType::F32, 1, 4, 1, 5), b(*gpu, DType::F32, 1, 6, 1, 3),
      c(*gpu, DType::F32, 1, 4, 1, 3);
  EXPECT_THROW(gpu->gemm(false, false, 1.0, {a.data(), DType::F32, 4, 5, 5},
                         {b.data(), DType::F32, 6, 3, 3}, 0.0, {c.data(), DType::F32, 4, 3, 3}),
               InvalidArgument);
}

// ---- memory -------------------------------------------------------------------------------

TEST(CudaMemory, ImpossibleAllocationSaysHowMuch) {
  SKIP_WITHOUT_GPU();
  auto gpu = make_cuda_backend();
  const size_t huge = size_t(1) << 50;  // 1 PiB
  try {
    gpu->allocate(huge);
    FAIL() << "1 PiB allocation succeeded";
  } catch (const OutOfMemory& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(std::to_string(huge)), std::string::npos) << msg;
    EXPECT_NE(msg.find("free of"), std::string::npos) << msg;
    EXPECT_NE(msg.find("cuda:0"), std::string::npos) << msg;
  }
  // The failure leaves the backend usable and the accounting unchanged.
  void* p = gpu->allocate(1 << 20);
  EXPECT_EQ(as_cuda(*gpu).current_bytes(), size_t(1) << 20);
  EXPECT_GE(gpu->peak_bytes(), size_t(1) << 20);
  gpu->deallocate(p);
  EXPECT_EQ(as_cuda(*gpu).current_bytes(), 0u);
  gpu->reset_peak();
  EXPECT_EQ(gpu->peak_bytes(), 0u);
}

// A call's temporaries: stream-ordered (usable by the operations queued after the allocation,
// handed back after those queued before the release), counted while held, and reused.
TEST(CudaMemory, ScratchIsOrderedOnTheStreamAndCounted) {
  SKIP_WITHOUT_GPU();
  auto gpu = make_cuda_backend();
  const int64_t B = 2, N = 4096, H = 8, D = 128;  // 32 MiB in fp32
  const size_t bytes = static_cast<size_t>(B * N * H * D) * 4;
  DeviceTensor keep(*gpu, DType::BF16, B, N, H, D);
  const size_t base = as_cuda(*gpu).current_bytes();
  gpu->reset_peak();
  for (int round = 0; round < 3; ++round) {
    {
      DeviceTensor t = DeviceTensor::scratch(*gpu, DType::F32, B, N, H, D);
      EXPECT_EQ(as_cuda(*gpu).current_bytes(), base + bytes);
      gpu->fill(t.view(), 1.5 + round);
      gpu->scale(t.view().rows(1, N / 2, 2), -2.0);  // odd rows negated and doubled
      gpu->copy(keep.view(), t.view());
    }  // released while the copy may still be queued
    EXPECT_EQ(as_cuda(*gpu).current_bytes(), base);
    Tensor h(DType::F64, B, N, H, D);
    gpu->download(h.view(), keep.view());
    const double x = 1.5 + round;
    bool ok = true;
    for (int64_t b = 0; b < B && ok; ++b)
      for (int64_t n = 0; n < N && ok; ++n)
        for (int64_t hh = 0; hh < H && ok; ++hh)
          for (int64_t d = 0; d < D && ok; ++d)
            ok = h.at(b, n, hh, d) == (n % 2 ? -2.0 * x : x);
    EXPECT_TRUE(ok) << "round " << round;
  }
  EXPECT_EQ(gpu->peak_bytes(), base + bytes);
  // On the CPU backend the same calls are plain allocations.
  auto cpu = make_cpu_backend();
  cpu->reset_peak();
  { DeviceTensor t = DeviceTensor::scratch(*cpu, DType::F32, B, N, H, D); }
  EXPECT_EQ(cpu->peak_bytes(), bytes);
}

TEST(CudaMemory, InvalidDeviceIsRejected) {
  SKIP_WITHOUT_GPU();
  EXPECT_THROW(make_cuda_backend(cuda_device_count()), InvalidArgument);
  EXPECT_THROW(make_cuda_backend(-1), InvalidArgument);
}

// ---- masks --------------------------------------------------------------------------------

void expect_same_mask(const BlockMask& got, const BlockMask& want, const std::string& what) {
  EXPECT_EQ(got.block_q, want.block_q) << what;
  EXPECT_EQ(got.num_q_blocks, want.num_q_blocks) << what;
  EXPECT_EQ(got.num_k_blocks, want.num_k_blocks) << what;
  EXPECT_EQ(got.row_ptr, want.row_ptr) << what;
  EXPECT_EQ(got.col_idx, want.col_idx) << what;
  EXPECT_EQ(got.partial, want.partial) << what;
}

// The device arrays of a prepared mask, copied back.
BlockMask device_arrays(const PreparedMask& pm) {
  const BlockMaskView v = pm.view();
  BlockMask m;
  m.block_q = v.block_q;
  m.block_k = v.block_k;
  m.num_q_blocks = v.num_q_blocks;
  m.num_k_blocks = v.num_k_blocks;
  m.row_ptr.resize(static_cast<size_t>(v.num_q_blocks + 1));
  m.col_idx.resize(static_cast<size_t>(v.nnz));
  m.partial.resize(static_cast<size_t>(v.nnz));
  EXPECT_EQ(cudaMemcpy(m.row_ptr.data(), v.row_ptr, m.row_ptr.size() * sizeof(int64_t),
                       cudaMemcpyDeviceToHost),
            cudaSuccess);
  if (v.nnz > 0) {
    EXPECT_EQ(cudaMemcpy(m.col_idx.data(), v.col_idx, m.col_idx.size() * sizeof(int32_t),
                         cudaMemcpyDeviceToHost),
              cudaSuccess);
    EXPECT_EQ(cudaMemcpy(m.partial.data(), v.partial, m.partial.size(), cudaMemcpyDeviceToHost),
              cudaSuccess);
  }
  return m;
}

std::vector<std::pair<std::string, SparseConfig>> device_mask_configs() {
  std::vector<std::pair<std::string, SparseConfig>> out;
  for (const auto& name : sparse_preset_names()) {
    SparseConfig c = sparse_preset(name);
    if (c.pattern != "content_adaptive") out.emplace_back("preset " + name, c);
  }
  auto with_ratio = [&](const std::string& pattern, double ratio, uint64_t seed = 0) {
    SparseConfig c;
    c.pattern = pattern;
    c.sparsity_ratio = ratio;
    c.seed = seed;
    out.emplace_back(pattern + " ratio " + std::to_string(ratio), c);
  };
  with_ratio("local_window", 0.1);
  with_ratio("local_window", 0.3);
  with_ratio("dilated_sparse", 0.05);
  with_ratio("dilated_sparse", 0.5);
  with_ratio("global_local", 0.2);
  with_ratio("hierarchical", 0.15);
  with_ratio("random", 0.1, 7);
  with_ratio("random", 0.5, 3);
  with_ratio("random", 1.0, 11);
  {
    SparseConfig c;
    c.pattern = "global_local";
    c.window_size = 128;
    c.window_given = true;
    c.sparsity_ratio = 0.3;  // derives global_tokens
    out.emplace_back("global_local derived globals", c);
  }
  {
    SparseConfig c;
    c.pattern = "random";  // default ratio
    c.seed = 123456789;
    out.emplace_back("random default", c);
  }
  return out;
}

TEST(CudaMasks, DeviceBuiltMasksEqualCpuPatterns) {
  SKIP_WITHOUT_GPU();
  auto be = make_cuda_backend();
  CudaBackend& gpu = as_cuda(*be);
  for (const auto& [name, base] : device_mask_configs())
    for (int64_t bs : {64, 128})
      for (int64_t nb : {1, 6, 33, 130})
        for (bool causal : {false, true}) {
          SparseConfig cfg = base;
          cfg.block_size = bs;
          const int64_t N = nb * bs;
          const std::string what = name + " bs " + std::to_string(bs) + " nb " +
                                   std::to_string(nb) + (causal ? " causal" : "");
          const BlockMask want = sparse_block_mask(cfg, N, causal);
          auto pm = gpu.build_pattern_mask(cfg, N, causal);
          expect_same_mask(pm->host(), want, what);
          expect_same_mask(device_arrays(*pm), want, what + " (device arrays)");
        }
}

TEST(CudaMasks, PrepareMaskCopiesTheCsrToTheDevice) {
  SKIP_WITHOUT_GPU();
  auto gpu = make_cuda_backend();
  SparseConfig cfg = sparse_preset("hierarchical_standard");
  const BlockMask m = sparse_block_mask(cfg, 64 * 50, true);
  auto pm = gpu->prepare_mask(m);
  expect_same_mask(pm->host(), m, "host copy");
  expect_same_mask(device_arrays(*pm), m, "device arrays");
  // An empty mask (no blocks) is legal too.
  MaskGeometry g;
  g.nq = g.nk = 100;
  BlockMask empty = build_block_mask(g, std::vector<std::vector<int32_t>>(2));
  auto pe = gpu->prepare_mask(empty);
  expect_same_mask(device_arrays(*pe), empty, "empty");
}

TEST(CudaMasks, ContentAdaptiveScoresAndTopkMatchCpu) {
  SKIP_WITHOUT_GPU();
  auto be = make_cuda_backend();
  CudaBackend& gpu = as_cuda(*be);
  const int64_t B = 2, H = 2, D = 32, bs = 64;
  uint64_t seed = 2000;
  for (DType dt : {DType::F32, DType::BF16})
    for (int64_t nb : {1, 7, 40}) {
      const int64_t N = nb * bs;
      Tensor q = Tensor::randn(dt, B, N, H, D, ++seed);
      Tensor k = Tensor::randn(dt, B, N, H, D, ++seed);
      // Repeated key blocks make equal scores: ties must go to the lower block index.
      for (int64_t src = 1; src + 3 < nb; src += 5)
        for (int64_t b = 0; b < B; ++b)
          for (int64_t r = 0; r < bs; ++r)
            for (int64_t h = 0; h < H; ++h)
              for (int64_t d = 0; d < D; ++d)
                k.set(b, (src + 3) * bs + r, h, d, k.at(b, src * bs + r, h, d));
      DeviceTensor dq(gpu, dt, B, N, H, D), dk(gpu, dt, B, N, H, D);
      gpu.upload(dq.view(), q.view());
      gpu.upload(dk.view(), k.view());
      const std::vector<double> want_scores = block_mean_scores(q.view(), k.view(), bs);
      const std::vector<double> scores = gpu.block_mean_scores(dq.view(), dk.view(), bs);
      ASSERT_EQ(scores.size(), want_scores.size());
      double max_s = 0.0, max_e = 0.0;
      for (size_t i = 0; i < scores.size(); ++i) {
        max_s = std::max(max_s, std::fabs(want_scores[i]));
        max_e = std::max(max_e, std::fabs(scores[i] - want_scores[i]));
      }
      EXPECT_LE(max_e, 1e-12 * std::max(1.0, max_s)) << dtype_name(dt) << " nb " << nb;
      for (int64_t topk : {int64_t(1), std::min<int64_t>(3, nb), nb, int64_t(0)})
        for (bool causal : {false, true}) {
          SparseConfig cfg;
          cfg.pattern = "content_adaptive";
          cfg.block_size = bs;
          cfg.topk = topk;
          cfg.sparsity_ratio = topk == 0 ? 0.25 : 0.0;
          const std::string what = std::string(dtype_name(dt)) + " nb " + std::to_string(nb) +
                                   " topk " + std::to_string(topk) + (causal ? " causal" : "");
          auto pm = gpu.build_topk_mask(dq.view(), dk.view(), cfg, causal);
          expect_same_mask(pm->host(), sparse_block_mask(cfg, N, causal, &scores), what);
          expect_same_mask(device_arrays(*pm), pm->host(), what + " (device arrays)");
        }
    }
}

// Hand-made scores with ties, NaN, signed zeros and infinities through the device top-k.
TEST(CudaMasks, TopkSelectionMatchesCpuOnAdversarialScores) {
  SKIP_WITHOUT_GPU();
  auto be = make_cuda_backend();
  CudaBackend& gpu = as_cuda(*be);
  const int64_t nb = 23, bs = 64;
  std::vector<double> s(static_cast<size_t>(nb * nb));
  const double specials[] = {0.0, -0.0, kInf, -kInf, std::nan(""), 1.5, 1.5, -2.0};
  for (int64_t i = 0; i < nb; ++i)
    for (int64_t j = 0; j < nb; ++j)
      s[static_cast<size_t>(i * nb + j)] =
          ((i * 7 + j * 3) % 4 == 0) ? specials[(i + j) % 8] : std::sin(0.37 * i * j + j);
  void* dev = gpu.allocate(s.size() * sizeof(double));
  ASSERT_EQ(cudaMemcpy(dev, s.data(), s.size() * sizeof(double), cudaMemcpyHostToDevice),
            cudaSuccess);
  for (int64_t topk : {1, 2, 5, 12, 22, 23})
    for (bool causal : {false, true}) {
      SparseConfig cfg;
      cfg.pattern = "content_adaptive";
      cfg.block_size = bs;
      cfg.topk = topk;
      cuda::DeviceMaskArrays arrays;
      const BlockMask got = cuda::topk_mask_from_scores(
          gpu, static_cast<cudaStream_t>(gpu.stream()), static_cast<const double*>(dev), nb, cfg,
          causal, &arrays);
      gpu.deallocate(arrays.storage);
      expect_same_mask(got, sparse_block_mask(cfg, nb * bs, causal, &s),
                       "topk " + std::to_string(topk) + (causal ? " causal" : ""));
    }
  gpu.deallocate(dev);
}

// ---- attention variants through both backends ------------------------------------------------

// Same-precision naive backward (FlashAttention's tolerance rule for gradients): the naive
// forward's rounding (reference.cpp) plus every backward intermediate rounded to `round`.
struct NaiveGrads {
  Tensor dq, dk, dv;
};

NaiveGrads naive_backward(const TensorView& q, const TensorView& k, const TensorView& v,
                          const TensorView& d_o, const testing::Allowed& allowed, DType round) {
  const int64_t B = q.B, H = q.H, D = q.D, N = q.N;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  auto r = [round](double x) { return round_to(round, x); };
  NaiveGrads g{Tensor(DType::F64, B, N, H, D), Tensor(DType::F64, B, N, H, D),
               Tensor(DType::F64, B, N, H, D)};
  std::vector<double> p(static_cast<size_t>(N)), dp(static_cast<size_t>(N)), o(D);
  std::vector<double> dk(static_cast<size_t>(N * D)), dv(static_cast<size_t>(N * D));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      std::fill(dk.begin(), dk.end(), 0.0);
      std::fill(dv.begin(), dv.end(), 0.0);
      for (int64_t i = 0; i < N; ++i) {
        double mx = -kInf;
        for (int64_t j = 0; j < N; ++j) {
          p[j] = -kInf;
          if (!allowed(b, h, i, j)) continue;
          double acc = 0.0;
          for (int64_t d = 0; d < D; ++d) acc += load(q, b, i, h, d) * load(k, b, j, h, d);
          p[j] = r(r(acc) * scale);
          mx = std::max(mx, p[j]);
        }
        if (mx == -kInf) continue;  // the row sees nothing: no gradient
        double sum = 0.0;
        for (int64_t j = 0; j < N; ++j)
          if (p[j] != -kInf) sum += std::exp(p[j] - mx);
        for (int64_t j = 0; j < N; ++j)
          p[j] = p[j] == -kInf ? 0.0 : r(r(std::exp(p[j] - mx)) / r(sum));
        double delta = 0.0;
        for (int64_t d = 0; d < D; ++d) {
          double acc = 0.0;
          for (int64_t j = 0; j < N; ++j) acc += p[j] * load(v, b, j, h, d);
          o[d] = r(acc);
          delta += load(d_o, b, i, h, d) * o[d];
        }
        delta = r(delta);
        for (int64_t j = 0; j < N; ++j) {
          if (p[j] == 0.0) continue;
          double acc = 0.0;
          for (int64_t d = 0; d < D; ++d) acc += load(d_o, b, i, h, d) * load(v, b, j, h, d);
          dp[j] = r(p[j] * (r(acc) - delta));  // dS_ij
          for (int64_t d = 0; d < D; ++d) {
            dv[j * D + d] += p[j] * load(d_o, b, i, h, d);
            dk[j * D + d] += dp[j] * load(q, b, i, h, d);
          }
        }
        for (int64_t d = 0; d < D; ++d) {
          double acc = 0.0;
          for (int64_t j = 0; j < N; ++j)
            if (p[j] != 0.0) acc += dp[j] * load(k, b, j, h, d);
          g.dq.set(b, i, h, d, r(r(acc) * scale));
        }
      }
      for (int64_t j = 0; j < N; ++j)
        for (int64_t d = 0; d < D; ++d) {
          g.dk.set(b, j, h, d, r(r(dk[j * D + d]) * scale));
          g.dv.set(b, j, h, d, r(dv[j * D + d]));
        }
    }
  return g;
}

struct VariantCase {
  std::string name;
  AttentionSpec spec;
  int64_t B, N, H, D;
};

std::vector<VariantCase> variant_cases() {
  std::vector<VariantCase> cases;
  {
    AttentionSpec s;
    s.variant = "dense";
    s.block_size = 64;
    cases.push_back({"dense ragged", s, 2, 200, 2, 64});
  }
  {
    AttentionSpec s;
    s.variant = "dense";
    s.block_size = 128;
    cases.push_back({"dense d128", s, 1, 256, 2, 128});
  }
  // N = 768: 12 blocks of 64, enough for every pattern to be sparse while the naive
  // same-precision references (O(N^2 D) per head) stay quick.
  for (const std::string preset :
       {"local", "dilated", "global_local", "hierarchical_standard", "adaptive_standard"}) {
    AttentionSpec s;
    s.variant = "block_sparse";
    s.sparse = sparse_preset(preset);
    if (preset == "adaptive_standard") s.sparse.sparsity_ratio = 0.3;  // top-4 of 12, not top-1
    cases.push_back({"block_sparse " + preset, s, 1, 768, 2, 64});
  }
  {
    AttentionSpec s;
    s.variant = "block_sparse";
    s.sparse.pattern = "random";
    s.sparse.sparsity_ratio = 0.3;
    s.sparse.seed = 5;
    s.sparse.block_size = 128;
    cases.push_back({"block_sparse random bs128", s, 1, 768, 2, 64});
  }
  for (DilatedMode mode : {DilatedMode::Groups, DilatedMode::LongNet}) {
    AttentionSpec s;
    s.variant = "dilated";
    s.dilated.segment_lengths = {128, 256, 512};
    s.dilated.dilation_rates = {1, 2, 4};
    s.dilated.mode = mode;
    cases.push_back({mode == DilatedMode::Groups ? "dilated groups" : "dilated longnet", s, 1,
                     512, 4, 64});
  }
  return cases;
}

// The token-level visibility of a dense or block-sparse case (for the naive references).
testing::Allowed token_mask(const VariantCase& c, bool causal, const Tensor& q64,
                            const Tensor& k64) {
  if (c.spec.variant == "dense")
    return [causal](int64_t, int64_t, int64_t i, int64_t j) { return !causal || j <= i; };
  const SparseConfig& cfg = c.spec.sparse;
  std::vector<double> scores;
  if (cfg.pattern == "content_adaptive")
    scores = block_mean_scores(q64.view(), k64.view(), cfg.block_size);
  const BlockMask m = sparse_block_mask(cfg, c.N, causal, scores.empty() ? nullptr : &scores);
  const int64_t nb = m.num_q_blocks, bs = cfg.block_size;
  auto dense = std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(nb * nb), 0);
  for (int64_t r = 0; r < nb; ++r)
    for (int64_t e = m.row_ptr[r]; e < m.row_ptr[r + 1]; ++e)
      (*dense)[static_cast<size_t>(r * nb + m.col_idx[e])] = 1;
  return [dense, nb, bs, causal](int64_t, int64_t, int64_t i, int64_t j) {
    return (*dense)[static_cast<size_t>((i / bs) * nb + j / bs)] && (!causal || j <= i);
  };
}

class CudaVariants : public ::testing::TestWithParam<std::tuple<int, bool>> {};

TEST_P(CudaVariants, ForwardAndBackwardMatchCpuBackend) {
  SKIP_WITHOUT_GPU();
  const auto [index, causal] = GetParam();
  VariantCase c = variant_cases()[static_cast<size_t>(index)];
  c.spec.causal = causal;
  SCOPED_TRACE(c.name + (causal ? " causal" : ""));
  auto gpu = make_cuda_backend();
  auto cpu = make_cpu_backend();
  auto variant = make_attention(c.spec);
  const int64_t B = c.B, N = c.N, H = c.H, D = c.D;
  uint64_t seed = 7000 + static_cast<uint64_t>(index) * 16 + (causal ? 8 : 0);
  for (DType dt : kLowDtypes) {
    SCOPED_TRACE(dtype_name(dt));
    // Inputs in the dtype; the fp64 reference sees exactly the same (rounded) values.
    const Tensor q = Tensor::randn(dt, B, N, H, D, ++seed), k = Tensor::randn(dt, B, N, H, D, ++seed),
                 v = Tensor::randn(dt, B, N, H, D, ++seed),
                 d_o = Tensor::randn(dt, B, N, H, D, ++seed);
    const Tensor q64 = q.to(DType::F64), k64 = k.to(DType::F64), v64 = v.to(DType::F64),
                 do64 = d_o.to(DType::F64);

    Tensor o_ref(DType::F64, B, N, H, D), lse_ref(DType::F64, B, N, H, 1);
    Tensor dq_ref(DType::F64, B, N, H, D), dk_ref(DType::F64, B, N, H, D),
        dv_ref(DType::F64, B, N, H, D);
    variant->forward(*cpu, q64.view(), k64.view(), v64.view(), o_ref.view(), lse_ref.view());
    variant->backward(*cpu, q64.view(), k64.view(), v64.view(), o_ref.view(), lse_ref.view(),
                      do64.view(), dq_ref.view(), dk_ref.view(), dv_ref.view());

    DeviceTensor gq(*gpu, dt, B, N, H, D), gk(*gpu, dt, B, N, H, D), gv(*gpu, dt, B, N, H, D),
        gdo(*gpu, dt, B, N, H, D), go(*gpu, dt, B, N, H, D), glse(*gpu, DType::F32, B, N, H, 1),
        gdq(*gpu, dt, B, N, H, D), gdk(*gpu, dt, B, N, H, D), gdv(*gpu, dt, B, N, H, D);
    gpu->upload(gq.view(), q.view());
    gpu->upload(gk.view(), k.view());
    gpu->upload(gv.view(), v.view());
    gpu->upload(gdo.view(), d_o.view());
    variant->forward(*gpu, gq.view(), gk.view(), gv.view(), go.view(), glse.view());
    variant->backward(*gpu, gq.view(), gk.view(), gv.view(), go.view(), glse.view(), gdo.view(),
                      gdq.view(), gdk.view(), gdv.view());
    auto fetch = [&](const DeviceTensor& t) {
      const TensorView w = t.view();
      Tensor h(DType::F64, w.B, w.N, w.H, w.D);
      gpu->download(h.view(), w);
      return h;
    };
    const Tensor o = fetch(go), lse = fetch(glse), dq = fetch(gdq), dk = fetch(gdk),
                 dv = fetch(gdv);
    {
      // A second call on the same backend (the variant's prepared masks kept, its temporaries
      // from the stream-ordered pool again) gives the same bits into fresh outputs.
      DeviceTensor o2(*gpu, dt, B, N, H, D), l2(*gpu, DType::F32, B, N, H, 1),
          dq2(*gpu, dt, B, N, H, D), dk2(*gpu, dt, B, N, H, D), dv2(*gpu, dt, B, N, H, D);
      variant->forward(*gpu, gq.view(), gk.view(), gv.view(), o2.view(), l2.view());
      variant->backward(*gpu, gq.view(), gk.view(), gv.view(), o2.view(), l2.view(), gdo.view(),
                        dq2.view(), dk2.view(), dv2.view());
      EXPECT_EQ(compare(fetch(o2).view(), o.view()).max_abs, 0.0) << "o, second call";
      EXPECT_EQ(compare(fetch(l2).view(), lse.view()).max_abs, 0.0) << "lse, second call";
      EXPECT_EQ(compare(fetch(dq2).view(), dq.view()).max_abs, 0.0) << "dq, second call";
      EXPECT_EQ(compare(fetch(dk2).view(), dk.view()).max_abs, 0.0) << "dk, second call";
      EXPECT_EQ(compare(fetch(dv2).view(), dv.view()).max_abs, 0.0) << "dv, second call";
    }

    // Tolerances: fp32 per tolerance_for relative to the output's scale; fp16/bf16 at most
    // twice the error of a same-precision naive implementation (forward: naive softmax with
    // rounding, or the naive dilated reference; dense/block-sparse gradients: the rounded naive
    // backward above). longnet and dilated gradients have no same-precision naive, so those use
    // 8 unit roundoffs of the dtype relative to the gradient's largest entry.
    double o_tol = 0, lse_tol = 0, grad_err[3] = {0, 0, 0};
    bool have_naive_grads = false;
    if (dt == DType::F32) {
      o_tol = testing::tolerance_for(dt, 0) * std::max(1.0, compare(o.view(), o_ref.view()).max_ref);
      lse_tol = testing::tolerance_for(dt, 0) * std::max(1.0, compare(lse.view(), lse_ref.view()).max_ref);
    } else {
      testing::NaiveResult naive;
      if (c.spec.variant == "dilated") {
        naive = testing::naive_dilated(q64.view(), k64.view(), v64.view(), c.spec.dilated, causal,
                                       0.0, dt);
      } else {
        const testing::Allowed allowed = token_mask(c, causal, q64, k64);
        naive = testing::naive_attention(q64.view(), k64.view(), v64.view(), allowed, 0.0, dt);
        const NaiveGrads ng = naive_backward(q64.view(), k64.view(), v64.view(), do64.view(),
                                             allowed, dt);
        grad_err[0] = compare(ng.dq.view(), dq_ref.view()).max_abs;
        grad_err[1] = compare(ng.dk.view(), dk_ref.view()).max_abs;
        grad_err[2] = compare(ng.dv.view(), dv_ref.view()).max_abs;
        have_naive_grads = true;
      }
      o_tol = testing::tolerance_for(dt, compare(naive.o.view(), o_ref.view()).max_abs);
      lse_tol = testing::tolerance_for(dt, compare(naive.lse.view(), lse_ref.view()).max_abs);
    }
    const ErrorStats eo = compare(o.view(), o_ref.view());
    const ErrorStats el = compare(lse.view(), lse_ref.view());
    EXPECT_TRUE(eo.finite && el.finite);
    EXPECT_LE(eo.max_abs, o_tol) << "o";
    EXPECT_LE(el.max_abs, lse_tol) << "lse";
    const Tensor* got[3] = {&dq, &dk, &dv};
    const Tensor* ref[3] = {&dq_ref, &dk_ref, &dv_ref};
    const char* names[3] = {"dq", "dk", "dv"};
    for (int g = 0; g < 3; ++g) {
      const ErrorStats e = compare(got[g]->view(), ref[g]->view());
      double tol;
      if (dt == DType::F32)
        tol = testing::tolerance_for(dt, 0) * std::max(1.0, e.max_ref);
      else if (have_naive_grads)
        tol = testing::tolerance_for(dt, grad_err[g]);
      else
        tol = 8 * unit_roundoff(dt) * std::max(1.0, e.max_ref);
      EXPECT_TRUE(e.finite) << names[g];
      EXPECT_LE(e.max_abs, tol) << names[g] << " max_ref " << e.max_ref;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllVariants, CudaVariants,
    ::testing::Combine(::testing::Range(0, static_cast<int>(variant_cases().size())),
                       ::testing::Bool()),
    [](const ::testing::TestParamInfo<CudaVariants::ParamType>& info) {
      std::string n = variant_cases()[static_cast<size_t>(std::get<0>(info.param))].name;
      for (char& ch : n)
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
      return n + (std::get<1>(info.param) ? "_causal" : "");
    });

// The contract's accumulation: backward adds into existing gradients of any dtype.
TEST(CudaAttention, BackwardAccumulatesIntoExistingGradients) {
  SKIP_WITHOUT_GPU();
  auto gpu = make_cuda_backend();
  auto cpu = make_cpu_backend();
  const int64_t B = 1, N = 192, H = 2, D = 64;
  for (DType dt : {DType::F32, DType::BF16}) {
    SCOPED_TRACE(dtype_name(dt));
    const Tensor q = Tensor::randn(dt, B, N, H, D, 1), k = Tensor::randn(dt, B, N, H, D, 2),
                 v = Tensor::randn(dt, B, N, H, D, 3), d_o = Tensor::randn(dt, B, N, H, D, 4),
                 g0 = Tensor::randn(dt, B, N, H, D, 5);
    MaskGeometry geo;
    geo.nq = geo.nk = N;
    geo.causal = true;
    const BlockMask mask = dense_block_mask(geo);
    // CPU: fp64 forward for O and L, then backward into gradients that start at g0.
    const Tensor q64 = q.to(DType::F64), k64 = k.to(DType::F64), v64 = v.to(DType::F64),
                 do64 = d_o.to(DType::F64);
    Tensor o64(DType::F64, B, N, H, D), l64(DType::F64, B, N, H, 1);
    Tensor dq_ref = g0.to(DType::F64);
    Tensor zeros(DType::F64, B, N, H, D);
    auto cm = cpu->prepare_mask(mask);
    auto cmt = cpu->prepare_mask(mask.transpose());
    AttnFwdParams f;
    f.q = q64.view();
    f.k = k64.view();
    f.v = v64.view();
    f.o = o64.view();
    f.lse = l64.view();
    f.mask = cm->view();
    f.causal = true;
    cpu->attention_forward(f);
    Tensor dk_ref = g0.to(DType::F64), dv_ref = zeros.clone();
    AttnBwdParams bp;
    bp.q = q64.view();
    bp.k = k64.view();
    bp.v = v64.view();
    bp.o = o64.view();
    bp.d_o = do64.view();
    bp.lse = l64.view();
    bp.dq = dq_ref.view();
    bp.dk = dk_ref.view();
    bp.dv = dv_ref.view();
    bp.mask = cm->view();
    bp.mask_t = cmt->view();
    bp.causal = true;
    cpu->attention_backward(bp);

    // GPU with the fp64 O and L rounded to the device dtypes, dq starting at g0.
    DeviceTensor gq(*gpu, dt, B, N, H, D), gk(*gpu, dt, B, N, H, D), gv(*gpu, dt, B, N, H, D),
        go(*gpu, dt, B, N, H, D), gdo(*gpu, dt, B, N, H, D), gl(*gpu, DType::F32, B, N, H, 1),
        gdq(*gpu, dt, B, N, H, D), gdk(*gpu, dt, B, N, H, D), gdv(*gpu, dt, B, N, H, D);
    gpu->upload(gq.view(), q.view());
    gpu->upload(gk.view(), k.view());
    gpu->upload(gv.view(), v.view());
    gpu->upload(go.view(), o64.view());
    gpu->upload(gdo.view(), d_o.view());
    gpu->upload(gl.view(), l64.view());
    gpu->upload(gdq.view(), g0.view());
    gpu->upload(gdk.view(), g0.view());
    gpu->fill(gdv.view(), 0.0);
    auto gm = gpu->prepare_mask(mask);
    auto gmt = gpu->prepare_mask(mask.transpose());
    AttnBwdParams gb = bp;
    gb.q = gq.view();
    gb.k = gk.view();
    gb.v = gv.view();
    gb.o = go.view();
    gb.d_o = gdo.view();
    gb.lse = gl.view();
    gb.dq = gdq.view();
    gb.dk = gdk.view();
    gb.dv = gdv.view();
    gb.mask = gm->view();
    gb.mask_t = gmt->view();
    const size_t held = as_cuda(*gpu).current_bytes();
    gpu->attention_backward(gb);
    gpu->synchronize();
    EXPECT_EQ(as_cuda(*gpu).current_bytes(), held) << "the call's scratch was not given back";
    const std::pair<const DeviceTensor*, const Tensor*> grads[] = {
        {&gdq, &dq_ref}, {&gdk, &dk_ref}, {&gdv, &dv_ref}};
    for (const auto& [got_dev, ref] : grads) {
      Tensor got(DType::F64, B, N, H, D);
      gpu->download(got.view(), got_dev->view());
      const ErrorStats e = compare(got.view(), ref->view());
      // A lost or doubled g0 (|g0| ~ 1) is off by ~1; rounding stays far below that.
      const double tol = dt == DType::F32
                             ? testing::tolerance_for(dt, 0) * std::max(1.0, e.max_ref)
                             : 16 * unit_roundoff(dt) * std::max(1.0, e.max_ref);
      EXPECT_LE(e.max_abs, tol) << (got_dev == &gdq ? "dq" : got_dev == &gdk ? "dk" : "dv")
                                << " max_ref " << e.max_ref;
    }
    // A host mask is rejected: kernels read device memory.
    gb.mask = cm->view();
    EXPECT_THROW(gpu->attention_backward(gb), InvalidArgument);
  }
}

// The three gradients g (on the device, [B, N, H, D] views) into fp64 host tensors.
void download_grads(Backend& gpu, const Padded (&g)[3], Tensor (&out)[3]) {
  for (int i = 0; i < 3; ++i) {
    const TensorView& v = g[i].dview;
    out[i] = Tensor(DType::F64, v.B, v.N, v.H, v.D);
    gpu.download(out[i].view(), v);
  }
}

// Overwritten gradients got[1] = {dq, dk, dv} against the same call's adding into zeros got[0]:
// finite, not all zero, dk and dv bit for bit where exact_dkv, else (and dq always) within four
// roundings of their dtype (dq_dtype, dkv_dtype).
void expect_write_matches_add(const Tensor (&got)[2][3], bool exact_dkv, DType dq_dtype,
                              DType dkv_dtype) {
  const char* const names[] = {"dq", "dk", "dv"};
  for (int i = 0; i < 3; ++i) {
    const ErrorStats e = compare(got[1][i].view(), got[0][i].view());
    EXPECT_TRUE(e.finite) << names[i];
    EXPECT_GT(e.max_ref, 0.05) << names[i] << ": zeros prove nothing";
    if (i > 0 && exact_dkv)
      EXPECT_EQ(e.max_abs, 0.0) << names[i];
    else
      EXPECT_LE(e.max_abs, 4 * unit_roundoff(i == 0 ? dq_dtype : dkv_dtype) * e.max_ref)
          << names[i];
  }
}

// AttnBwdParams::accumulate false: gradients that start at 7 are overwritten, equal to the
// gradients of the same call adding into zeros. dk and dv of the input dtype (which the Hopper
// kernel writes without reading) bit for bit, also with the query range in parts at head dim 128
// (the first part writes, the later ones add in order), into strided views (element by
// element), and where the non-causal calls' 16 works (fewer than the CTAs) are split along the
// query range, their pieces meeting in a scratch (BwdArgs::piece_scratch);
// fp32 dk, dv (zeroed, then added) and every dq (zeroed, or an fp32 accumulator converted) to
// the rounding of atomics in another order. A gradient left at 7 is off by 7.
TEST(CudaAttention, BackwardOverwritesGradients) {
  SKIP_WITHOUT_GPU();
  auto gpu = make_cuda_backend();
  const int64_t B = 1, N = 1000, H = 2;
  int runs = 0, wrote = 0, input_runs = 0, transposed = 0, d128_input_runs = 0;
  for (int64_t D : {64, 128})
    for (DType dt : {DType::BF16, DType::F16})
      for (bool causal : {false, true})
        for (bool input_grads : {true, false})
          for (const char* parts : {"", "3"})
            for (bool strided : {false, true}) {
              if (*parts && D != 128) continue;
              if (strided && (*parts || !input_grads || dt != DType::BF16)) continue;
              const DType gdt = input_grads ? dt : DType::F32;
              SCOPED_TRACE(std::string(dtype_name(dt)) + " d" + std::to_string(D) +
                           (causal ? " causal" : "") + " grads " + dtype_name(gdt) +
                           (*parts ? " parts 3" : "") + (strided ? " strided" : ""));
              const ScopedEnv split("LONGATTN_SM90_QSPLIT", parts);
              // (Every other run writes dk and dv from registers instead of by TMA stores.)
              const ScopedEnv store("LONGATTN_SM90_DKV_STORE", runs % 2 == 1 ? "0" : "");
              const uint64_t seed = 900 + static_cast<uint64_t>(runs) * 16;
              // Contiguous tensors (16-byte rows: the vector and TMA paths); strided: gradients
              // in views of odd rows (element by element; the inputs stay contiguous, so the
              // Hopper kernels still take the call).
              auto make = [&](DType t, uint64_t sd, bool pad) {
                return make_input(*gpu, t, B, N, H, D, sd, pad);
              };
              BwdInputs in = make_bwd_inputs(*gpu, dt, B, N, H, D, seed);
              Padded &q = in.q, &k = in.k, &v = in.v, &o = in.o, &d_o = in.d_o;
              DeviceTensor& lse = in.lse;
              const MaskGeometry geo = square_geometry(N, causal);
              const BlockMask mask = dense_block_mask(geo);
              auto gm = gpu->prepare_mask(mask);
              auto gmt = gpu->prepare_mask(mask.transpose());
              gpu->attention_forward(make_fwd_params({q.dview, k.dview, v.dview, o.dview,
                                                      lse.view()},
                                                     gm->view(), {0.0, causal}));
              Tensor got[2][3];  // [zeros and add, 7 and write][dq, dk, dv]
              for (int mode = 0; mode < 2; ++mode) {
                Padded g[3];
                for (int i = 0; i < 3; ++i) {
                  g[i] = make(gdt, seed + 6 + i, strided);
                  gpu->fill(g[i].dview, mode == 0 ? 0.0 : 7.0);
                }
                AttnBwdParams bp = make_bwd_params(
                    {q.dview, k.dview, v.dview, o.dview, lse.view()},
                    {d_o.dview, g[0].dview, g[1].dview, g[2].dview}, gm->view(), gmt->view(),
                    {0.0, causal});
                bp.accumulate = mode == 0;
                gpu->attention_backward(bp);
                if (mode == 1) {
                  const bool w = cuda::backward_last_wrote_dkv();
                  if (!input_grads) EXPECT_FALSE(w) << "fp32 dk, dv are zeroed and added";
                  wrote += w ? 1 : 0;
                  input_runs += input_grads ? 1 : 0;
                  // (head dim 128's writing kernel: dQ into the transposed accumulator)
                  if (cuda::backward_last_dq_transposed()) {
                    EXPECT_TRUE(w && D == 128);
                    ++transposed;
                  }
                  d128_input_runs += input_grads && D == 128 ? 1 : 0;
                } else {
                  EXPECT_FALSE(cuda::backward_last_dq_transposed()) << "adding calls";
                }
                download_grads(*gpu, g, got[mode]);
              }
              expect_write_matches_add(got, input_grads, gdt, gdt);
              ++runs;
            }
  EXPECT_EQ(runs, 28);
  // On sm_90 every call with dk, dv of the input dtype (dense: tiles by position) takes the
  // writing kernels; elsewhere none does.
  const bool hopper = hopper_kernels_on();
  EXPECT_EQ(input_runs, 16);
  EXPECT_EQ(wrote, hopper ? input_runs : 0);
  EXPECT_EQ(d128_input_runs, 10);
  EXPECT_EQ(transposed, hopper ? d128_input_runs : 0);
}

// Overwritten gradients in views with 16-byte strides inside a wider parent, as the gradients
// of a packed [B, N, 3 H, D] projection: rows 1..N of N + 2, heads H..2H-1 of 3 H, every column.
// They keep the vector and TMA paths, so at head dim 128 the writing kernel stores dk and dv by
// TMA through tensor maps of these strides (cuda::backward_last_stored_dkv_by_tma), with N not a
// multiple of the 128-key blocks (the last block's boxes are clipped at Nk). dk and dv equal bit
// for bit the same call adding into zeros on contiguous tensors, dq within four roundings, and
// nothing of the parents outside the views (filled with 7) changes.
TEST(CudaAttention, BackwardWritesGradientViewsWithTmaStrides) {
  SKIP_WITHOUT_GPU();
  auto gpu = make_cuda_backend();
  const int64_t B = 2, N = 1000, H = 2;
  const bool hopper = hopper_kernels_on();
  const char* const names[] = {"dq", "dk", "dv"};
  int runs = 0, stored = 0;
  for (int64_t D : {64, 128})
    for (DType dt : {DType::BF16, DType::F16})
      for (bool causal : {false, true}) {
        SCOPED_TRACE(std::string(dtype_name(dt)) + " d" + std::to_string(D) +
                     (causal ? " causal" : ""));
        const uint64_t seed = 1300 + static_cast<uint64_t>(runs) * 16;
        BwdInputs in = make_bwd_inputs(*gpu, dt, B, N, H, D, seed);
        const MaskGeometry geo = square_geometry(N, causal);
        const BlockMask mask = dense_block_mask(geo);
        auto gm = gpu->prepare_mask(mask);
        auto gmt = gpu->prepare_mask(mask.transpose());
        const AttnTensors inputs{in.q.dview, in.k.dview, in.v.dview, in.o.dview, in.lse.view()};
        gpu->attention_forward(make_fwd_params(inputs, gm->view(), {0.0, causal}));
        Tensor got[2][3];  // [contiguous zeros and add, views of 7 and write][dq, dk, dv]
        Padded zeros[3];
        for (int i = 0; i < 3; ++i) {
          zeros[i] = make_input(*gpu, dt, B, N, H, D, seed + 6 + i, false);
          gpu->fill(zeros[i].dview, 0.0);
        }
        AttnBwdParams add = make_bwd_params(
            inputs, {in.d_o.dview, zeros[0].dview, zeros[1].dview, zeros[2].dview}, gm->view(),
            gmt->view(), {0.0, causal});
        add.accumulate = true;
        gpu->attention_backward(add);
        download_grads(*gpu, zeros, got[0]);
        DeviceTensor parent[3];
        TensorView view[3];
        for (int i = 0; i < 3; ++i) {
          parent[i] = DeviceTensor(*gpu, dt, B, N + 2, 3 * H, D);
          gpu->fill(parent[i].view(), 7.0);
          view[i] = parent[i].view().rows(1, N).heads(H, H);
        }
        AttnBwdParams write = make_bwd_params(inputs, {in.d_o.dview, view[0], view[1], view[2]},
                                              gm->view(), gmt->view(), {0.0, causal});
        write.accumulate = false;
        gpu->attention_backward(write);
        EXPECT_EQ(cuda::backward_last_wrote_dkv(), hopper);
        const bool tma = cuda::backward_last_stored_dkv_by_tma();
        EXPECT_EQ(tma, hopper && D == 128) << "16-byte strides keep the TMA stores";
        stored += tma ? 1 : 0;
        for (int i = 0; i < 3; ++i) {
          got[1][i] = Tensor(DType::F64, B, N, H, D);
          gpu->download(got[1][i].view(), view[i]);
        }
        expect_write_matches_add(got, true, dt, dt);
        for (int i = 0; i < 3; ++i) {
          Tensor whole(DType::F64, B, N + 2, 3 * H, D);
          gpu->download(whole.view(), parent[i].view());
          int64_t changed = 0;
          for (int64_t b = 0; b < B; ++b)
            for (int64_t n = 0; n < N + 2; ++n)
              for (int64_t h = 0; h < 3 * H; ++h) {
                if (n >= 1 && n <= N && h >= H && h < 2 * H) continue;  // the view
                for (int64_t d = 0; d < D; ++d) changed += whole.at(b, n, h, d) != 7.0 ? 1 : 0;
              }
          EXPECT_EQ(changed, 0) << names[i] << ": elements of the parent outside the view";
        }
        ++runs;
      }
  EXPECT_EQ(runs, 8);
  EXPECT_EQ(stored, hopper ? 4 : 0);
}

// The transposed dQ accumulator of head dim 128's writing kernel (cuda::backward_dq_accumulator):
// overwritten gradients equal those of the same call adding into zeros (which adds into dq's
// rows, or a row-major accumulator), on rows that are no multiple of the 80-query tiles (the
// last tile's block crosses Nq) nor of 8, for dq of the input dtype and fp32 (dk and dv of the
// input dtype, which the kernel writes), two batches of three heads, causal or not, and a dq in
// a view of odd rows (element by element). A mask of windows over 8 blocks (rows that are runs,
// walked by position with LONGATTN_SM90_BWD_RUNS=1) writes dk and dv as well but adds dQ into
// dq's rows (its tiles start at each run, not at multiples of 80). Half the transposed calls go
// through cuda::flash_backward with a given accumulator of NaN bytes, which it must zero.
TEST(CudaAttention, BackwardDqTransposed) {
  SKIP_WITHOUT_GPU();
  auto gpu = make_cuda_backend();
  const int64_t B = 2, H = 3, D = 128;
  const bool hopper = hopper_kernels_on();
  int runs = 0;
  for (int64_t N : {1003, 203})
    for (DType dt : {DType::BF16, DType::F16})
      for (bool causal : {false, true})
        for (bool dq32 : {false, true})
          for (bool strided : {false, true})
            for (bool window : {false, true}) {
              if (strided && (dt != DType::BF16 || causal)) continue;
              if (window && (dt != DType::BF16 || strided || dq32 || N < 1000)) continue;
              const DType qdt = dq32 ? DType::F32 : dt;
              SCOPED_TRACE(std::string(dtype_name(dt)) + " N " + std::to_string(N) +
                           (causal ? " causal" : "") + " dq " + dtype_name(qdt) +
                           (strided ? " strided" : "") + (window ? " window" : ""));
              const ScopedEnv runs_env("LONGATTN_SM90_BWD_RUNS", window ? "1" : "");
              const uint64_t seed = 3100 + static_cast<uint64_t>(runs) * 16;
              auto make = [&](DType t, uint64_t sd, bool pad) {
                return make_input(*gpu, t, B, N, H, D, sd, pad);
              };
              BwdInputs in = make_bwd_inputs(*gpu, dt, B, N, H, D, seed);
              Padded &q = in.q, &k = in.k, &v = in.v, &o = in.o, &d_o = in.d_o;
              DeviceTensor& lse = in.lse;
              const MaskGeometry geo = square_geometry(N, causal);
              std::vector<std::vector<int32_t>> rows;  // windows: blocks i - 2 .. i + 1
              const int32_t nb = static_cast<int32_t>((N + 127) / 128);
              for (int32_t i = 0; i < nb; ++i) {
                rows.emplace_back();
                for (int32_t j = std::max(0, i - 2); j <= std::min(nb - 1, i + 1); ++j)
                  rows.back().push_back(j);
              }
              const BlockMask mask = window ? build_block_mask(geo, rows) : dense_block_mask(geo);
              auto gm = gpu->prepare_mask(mask);
              auto gmt = gpu->prepare_mask(mask.transpose());
              gpu->attention_forward(make_fwd_params(
                  {q.dview, k.dview, v.dview, o.dview, lse.view()}, gm->view(), {0.0, causal}));
              Tensor got[2][3];
              for (int mode = 0; mode < 2; ++mode) {
                Padded g[3];
                for (int i = 0; i < 3; ++i) {
                  g[i] = make(i == 0 ? qdt : dt, seed + 6 + i, strided && i == 0);
                  gpu->fill(g[i].dview, mode == 0 ? 0.0 : 7.0);
                }
                AttnBwdParams bp = make_bwd_params({q.dview, k.dview, v.dview, o.dview, lse.view()},
                                                   {d_o.dview, g[0].dview, g[1].dview, g[2].dview},
                                                   gm->view(), gmt->view(), {0.0, causal});
                bp.accumulate = mode == 0;
                const cuda::DqAccumulator acc = cuda::backward_dq_accumulator(bp);
                const bool expect_t = hopper && mode == 1 && !window;
                EXPECT_EQ(acc.transposed, expect_t);
                if (acc.transposed) {
                  EXPECT_EQ(acc.rows, backward_dq_t_rows(N));
                  EXPECT_EQ(acc.floats, static_cast<size_t>(B * H * D * acc.rows));
                }
                if (acc.transposed && runs % 2 == 0) {
                  // Through flash_backward with an accumulator of NaN bytes: zeroed in the delta
                  // kernel's launch, or (LONGATTN_BWD_ZERO_IN_DELTA=0, every other such case)
                  // by its own memset. Missed lines would make dq NaN.
                  const ScopedEnv zero_env("LONGATTN_BWD_ZERO_IN_DELTA", runs % 4 == 0 ? "0" : "");
                  const size_t bytes = acc.floats * sizeof(float);
                  void* buf = nullptr;
                  gpu->synchronize();
                  ASSERT_EQ(cudaMalloc(&buf, bytes), cudaSuccess);
                  ASSERT_EQ(cudaMemset(buf, 0xff, bytes), cudaSuccess);
                  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
                  cuda::flash_backward(bp, nullptr, nullptr, buf, &acc);
                  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
                  EXPECT_EQ(cudaFree(buf), cudaSuccess);
                } else {
                  gpu->attention_backward(bp);
                }
                EXPECT_EQ(cuda::backward_last_dq_transposed(), expect_t);
                if (mode == 1) EXPECT_EQ(cuda::backward_last_wrote_dkv(), hopper);
                download_grads(*gpu, g, got[mode]);
              }
              expect_write_matches_add(got, true, qdt, dt);
              ++runs;
            }
  EXPECT_EQ(runs, 22);
}

// A variant's bf16 backward of 2^19 rows, which runs in parts of rows: against the fp32 run of
// the same values on the GPU (one call), within a few roundings of the largest value; the
// backward's peak (and the forward's, where given) under `most_bwd` (`most_fwd`) bytes.
void expect_half_run_in_parts(const AttentionSpec& spec, int64_t H, int64_t D, size_t most_bwd,
                              size_t most_fwd = 0) {
  auto gpu = make_cuda_backend();
  const int64_t B = 1, N = int64_t{1} << 19;
  auto att = make_attention(spec);
  Tensor host[4];
  for (int i = 0; i < 4; ++i)
    host[i] = Tensor::randn(DType::F64, B, N, H, D, 800 + i).to(DType::BF16);
  Tensor grads[2][3], outs[2];
  for (int run = 0; run < 2; ++run) {  // 0: bf16 (in parts), 1: fp32 (one call)
    const DType dt = run == 0 ? DType::BF16 : DType::F32;
    DeviceTensor in[4], o(*gpu, dt, B, N, H, D), lse(*gpu, DType::F32, B, N, H, 1), g[3];
    for (int i = 0; i < 4; ++i) {
      in[i] = DeviceTensor(*gpu, dt, B, N, H, D);
      const Tensor x = host[i].to(dt);
      gpu->upload(in[i].view(), x.view());
    }
    for (DeviceTensor& t : g) t = DeviceTensor(*gpu, dt, B, N, H, D);
    gpu->reset_peak();
    size_t before = gpu->peak_bytes();
    att->forward(*gpu, in[0].view(), in[1].view(), in[2].view(), o.view(), lse.view());
    if (run == 0 && most_fwd > 0) EXPECT_LT(gpu->peak_bytes() - before, most_fwd);
    gpu->reset_peak();
    before = gpu->peak_bytes();
    att->backward(*gpu, in[0].view(), in[1].view(), in[2].view(), o.view(), lse.view(),
                  in[3].view(), g[0].view(), g[1].view(), g[2].view());
    if (run == 0) EXPECT_LT(gpu->peak_bytes() - before, most_bwd);
    outs[run] = Tensor(DType::F64, B, N, H, D);
    gpu->download(outs[run].view(), o.view());
    for (int i = 0; i < 3; ++i) {
      grads[run][i] = Tensor(DType::F64, B, N, H, D);
      gpu->download(grads[run][i].view(), g[i].view());
    }
  }
  const double opeak = compare(outs[1].view(), Tensor(DType::F64, B, N, H, D).view()).max_abs;
  EXPECT_LE(compare(outs[0].view(), outs[1].view()).max_abs, opeak / 64) << "o";
  for (int i = 0; i < 3; ++i) {
    const double peak = compare(grads[1][i].view(), Tensor(DType::F64, B, N, H, D).view()).max_abs;
    EXPECT_GT(peak, 0.1);
    EXPECT_LE(compare(grads[0][i].view(), grads[1][i].view()).max_abs, peak / 64)
        << "gradient " << "qkv"[i];
  }
}

// The block-sparse backward in chunks of query rows (a local window): the peak holds less than
// the single call's fp32 dQ of every row (two chunks: half of it).
TEST(CudaVariants, BlockSparseHalfGradientsInChunks) {
  SKIP_WITHOUT_GPU();
  const int64_t N = int64_t{1} << 19, H = 1, D = 64;
  for (bool causal : {false, true}) {
    SCOPED_TRACE(causal ? "causal" : "full");
    AttentionSpec spec;
    spec.variant = "block_sparse";
    spec.causal = causal;
    spec.sparse.pattern = "local_window";
    spec.sparse.block_size = 128;
    spec.sparse.window_size = 384;
    spec.sparse.window_given = true;
    expect_half_run_in_parts(spec, H, D, static_cast<size_t>(N * H * D) * 4);
  }
}

// Dilated longnet in passes over runs of rows (two: pass_rows N / 2): the forward holds less
// than one fp32 tensor of every row (the merged output's accumulator alone), the backward less
// than two (fp32 dq, dk, dv of every row are three).
TEST(CudaVariants, DilatedLongnetHalfInRowPasses) {
  SKIP_WITHOUT_GPU();
  const int64_t N = int64_t{1} << 19, H = 1, D = 64;
  const size_t f32_tensor = static_cast<size_t>(N * H * D) * 4;
  for (bool exact : {false, true}) {
    SCOPED_TRACE(exact ? "exact" : "detached");
    AttentionSpec spec;
    spec.variant = "dilated";
    spec.causal = !exact;
    spec.block_size = 128;
    spec.dilated.segment_lengths = {2048, 4096};
    spec.dilated.dilation_rates = {1, 2};
    spec.dilated.mode = DilatedMode::LongNet;
    spec.dilated.exact_longnet_grad = exact;
    spec.dilated.pass_rows = N / 2;
    expect_half_run_in_parts(spec, H, D, 2 * f32_tensor, f32_tensor);
  }
}

}  // namespace
}  // namespace longattn
