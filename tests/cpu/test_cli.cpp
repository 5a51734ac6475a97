// The longattn command as users run it: --help of every subcommand, exit code 2 with the
// argument named for invalid input, verify passing on small cases, and run writing .npy files
// that read back and match the library's own result.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "attention/variant.hpp"
#include "kernels/backend.hpp"
#include "runtime/npy.hpp"

namespace longattn {
namespace {

namespace fs = std::filesystem;

// The binary: passed by the build, or found next to this test (both land in build/bin).
std::string cli_path() {
#ifdef LONGATTN_CLI_PATH
  if (fs::exists(LONGATTN_CLI_PATH)) return LONGATTN_CLI_PATH;
#endif
  return (fs::read_symlink("/proc/self/exe").parent_path() / "longattn").string();
}

struct Result {
  int code = -1;
  std::string output;  // stdout and stderr together
};

Result run_cli(const std::string& args) {
  // A launcher's environment would make the command initialise MPI; these runs are plain.
  const std::string cmd = "env -u OMPI_COMM_WORLD_SIZE -u PMI_SIZE -u PMI_RANK -u PMIX_RANK "
                          "LONGATTN_CPU_THREADS=2 '" + cli_path() + "' " + args + " 2>&1";
  Result r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(cli_path())) GTEST_SKIP() << "longattn binary not found at " << cli_path();
    std::string tmpl = (fs::temp_directory_path() / "longattn_cli_XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  fs::path dir_;
};

TEST_F(Cli, HelpListsCommandsAndEverySubcommandHasHelp) {
  const Result top = run_cli("--help");
  EXPECT_EQ(top.code, 0) << top.output;
  for (const char* cmd : {"run", "pattern", "verify"}) {
    EXPECT_TRUE(contains(top.output, cmd)) << top.output;
    const Result r = run_cli(std::string(cmd) + " --help");
    EXPECT_EQ(r.code, 0) << cmd << ": " << r.output;
    EXPECT_TRUE(contains(r.output, std::string("Usage: longattn ") + cmd)) << r.output;
    EXPECT_TRUE(contains(r.output, "--seq-len")) << r.output;
  }
  EXPECT_EQ(run_cli("").code, 2);
  const Result unknown = run_cli("frobnicate");
  EXPECT_EQ(unknown.code, 2);
  EXPECT_TRUE(contains(unknown.output, "frobnicate")) << unknown.output;
}

TEST_F(Cli, InvalidArgumentsExitTwoNamingTheArgument) {
  struct Bad {
    std::string args;
    std::vector<std::string> expect;  // fragments of the message
  };
  const Bad cases[] = {
      {"run --seq-len 0", {"--seq-len", "0", "positive"}},
      {"run --variant flash --seq-len 64", {"--variant", "flash", "dense", "dilated", "block_sparse"}},
      {"run --dtype fp8 --seq-len 64", {"--dtype", "fp8"}},
      {"run --mode sideways --variant dilated --seq-len 64", {"--mode", "sideways", "groups"}},
      {"run --head-dim 1000 --seq-len 64", {"--head-dim", "1000"}},
      {"run --variant dilated --seq-len 96 --segment-lengths 64", {"64"}},
      {"run --variant dilated --seq-len 96 --segment-lengths 32,4x", {"--segment-lengths", "4x"}},
      {"run --variant dilated --mode longnet --seq-len 64 --pass-rows -3", {"--pass-rows", "-3"}},
      {"run --seq-len 64 --split-rows -2", {"--split-rows", "-2"}},
      {"run --variant dilated --seq-len 96 --segment-lengths 9999999999999M",
       {"--segment-lengths", "9999999999999M"}},
      {"run --no-such-option", {"no-such-option"}},
      // Words that are no option's value: dropped before, so --causal false ran causal.
      {"run --seq-len 64 --causal false", {"unexpected argument 'false'", "run --help"}},
      {"verify --seq-len 64 extra", {"unexpected argument 'extra'"}},
      {"pattern --seq-len 256 --block-size 64 stray", {"unexpected argument 'stray'"}},
      {"bench --seq-len 64 --causal yes leftover", {"unexpected argument 'leftover'"}},
      {"run --seq-len abc", {"seq-len", "abc"}},
      {"pattern --seq-len 256 --block-size 64 --sparsity-ratio 1.5", {"sparsity", "1.5"}},
      {"pattern --seq-len 100 --block-size 64", {"100"}},
      {"pattern --preset no_such_preset --seq-len 256", {"no_such_preset", "ultra_sparse"}},
      {"verify --dtype fp64,fp7 --seq-len 64", {"--dtype", "fp7"}},
      {"verify --dist ring --seq-len 64", {"--dist", "mpirun"}},
      {"run --device tpu --seq-len 64", {"--device", "tpu"}},
      {"run --q " + (dir_ / "missing.npy").string() + " --k x.npy --v y.npy",
       {"--q", "missing.npy", "cannot open"}},
      {"run --q " + (dir_ / "missing.npy").string(), {"--k", "given together"}},
  };
  for (const auto& c : cases) {
    const Result r = run_cli(c.args);
    EXPECT_EQ(r.code, 2) << c.args << "\n" << r.output;
    for (const auto& e : c.expect) EXPECT_TRUE(contains(r.output, e)) << c.args << "\n" << r.output;
  }
}

// Inputs past the host's memory (or past what a size_t counts) say which tensor and how much,
// not a bare std::bad_alloc. (2 * 10^15 bytes: past any host's address space. Under
// AddressSanitizer, whose operator new aborts the process on such a request, only the size_t
// case runs.)
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAddressSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kAddressSanitizer = true;
#else
constexpr bool kAddressSanitizer = false;
#endif
#else
constexpr bool kAddressSanitizer = false;
#endif
TEST_F(Cli, HostOutOfMemoryNamesTheTensor) {
  const Result huge = run_cli("run --seq-len 4000000000000000000");
  EXPECT_EQ(huge.code, 2) << huge.output;
  EXPECT_TRUE(contains(huge.output, "more bytes than a size_t counts")) << huge.output;
  if (kAddressSanitizer) GTEST_SKIP() << "the allocation that fails aborts under ASan";
  const Result oom = run_cli("run --seq-len 1000000000000");
  EXPECT_EQ(oom.code, 1) << oom.output;
  EXPECT_TRUE(contains(oom.output, "host memory exhausted (std::bad_alloc): a tensor of "
                                   "1x1000000000000x8x64"))
      << oom.output;
  EXPECT_TRUE(contains(oom.output, "GiB")) << oom.output;
}

TEST_F(Cli, CudaDeviceIsRefusedClearlyWithoutAGpu) {
  const Result r = run_cli("run --device cuda --seq-len 64 --heads 1 --head-dim 8 --out " +
                           (dir_ / "gpu").string());
  if (r.code == 0) GTEST_SKIP() << "a GPU ran the command";
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "--device")) << r.output;
  EXPECT_TRUE(contains(r.output, "without CUDA") || contains(r.output, "no GPU")) << r.output;
}

TEST_F(Cli, VerifyPassesOnSmallCases) {
  const Result dense = run_cli("verify --variant dense --seq-len 96 --heads 2 --head-dim 16 "
                               "--block-size 32 --causal --dtype fp64,bf16");
  EXPECT_EQ(dense.code, 0) << dense.output;
  EXPECT_TRUE(contains(dense.output, "2 cases: 2 passed")) << dense.output;

  const Result preset = run_cli("verify --preset local --seq-len 256 --heads 2 --head-dim 8");
  EXPECT_EQ(preset.code, 0) << preset.output;
  EXPECT_TRUE(contains(preset.output, "block_sparse:local")) << preset.output;

  const std::string json = (dir_ / "verify.json").string();
  // Segment lengths take the sizes' K and M suffixes, as --seq-len does in bench (read as 1
  // and 2, rates 16 and 32 would be refused).
  const Result dil = run_cli("verify --variant dilated --mode longnet --seq-len 2048 --heads 3 "
                             "--head-dim 8 --segment-lengths 1K,2k --dilation-rates 16,32 --json " +
                             json);
  EXPECT_EQ(dil.code, 0) << dil.output;
  std::ifstream in(json);
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  EXPECT_TRUE(contains(text, "\"status\": \"ok\"")) << text;
  EXPECT_TRUE(contains(text, "\"grad_err\"")) << text;
}

TEST_F(Cli, RunWritesFilesThatReadBackAndMatchTheLibrary) {
  const std::string out = (dir_ / "run").string();
  const Result r = run_cli("run --variant block_sparse --pattern local_window --window-size 64 "
                           "--seq-len 128 --block-size 32 --heads 2 --head-dim 8 --causal "
                           "--backward --save-inputs --seed 5 --out " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "TFLOP/s")) << r.output;
  EXPECT_TRUE(contains(r.output, "density")) << r.output;

  const Tensor q = read_npy(out + "/q.npy"), k = read_npy(out + "/k.npy"),
               v = read_npy(out + "/v.npy"), d_o = read_npy(out + "/do.npy");
  const Tensor o = read_npy(out + "/o.npy"), lse = read_npy(out + "/lse.npy", NpyLayout::BNH);
  const Tensor dq = read_npy(out + "/dq.npy"), dk = read_npy(out + "/dk.npy"),
               dv = read_npy(out + "/dv.npy");
  EXPECT_EQ(o.shape(), (std::array<int64_t, 4>{1, 128, 2, 8}));
  EXPECT_EQ(lse.shape(), (std::array<int64_t, 4>{1, 128, 2, 1}));
  EXPECT_EQ(o.dtype(), DType::F32);
  EXPECT_EQ(lse.dtype(), DType::F32);
  EXPECT_EQ(read_npy_info(out + "/lse.npy").shape.size(), 3u);

  // The same computation through the library on the inputs read back.
  AttentionSpec spec;
  spec.variant = "block_sparse";
  spec.causal = true;
  spec.sparse.pattern = "local_window";
  spec.sparse.window_size = 64;
  spec.sparse.window_given = true;
  spec.sparse.block_size = 32;
  spec.sparse.seed = 5;
  spec.block_size = 32;
  auto be = make_cpu_backend(1);
  auto var = make_attention(spec);
  Tensor o2(DType::F32, 1, 128, 2, 8), lse2(DType::F32, 1, 128, 2, 1);
  var->forward(*be, q.view(), k.view(), v.view(), o2.view(), lse2.view());
  Tensor dq2(DType::F32, 1, 128, 2, 8), dk2(DType::F32, 1, 128, 2, 8), dv2(DType::F32, 1, 128, 2, 8);
  var->backward(*be, q.view(), k.view(), v.view(), o2.view(), lse2.view(), d_o.view(),
                dq2.view(), dk2.view(), dv2.view());
  EXPECT_LT(compare(o.view(), o2.view()).max_abs, 1e-6);
  EXPECT_LT(compare(lse.view(), lse2.view()).max_abs, 1e-6);
  EXPECT_LT(compare(dq.view(), dq2.view()).max_abs, 1e-5);
  EXPECT_LT(compare(dk.view(), dk2.view()).max_abs, 1e-5);
  EXPECT_LT(compare(dv.view(), dv2.view()).max_abs, 1e-5);
  EXPECT_GT(compare(o.view(), o2.view()).max_ref, 0.0);

  // Feeding the written inputs back gives the same outputs bit for bit.
  const std::string again = (dir_ / "again").string();
  const Result r2 = run_cli("run --variant block_sparse --pattern local_window --window-size 64 "
                            "--block-size 32 --causal --backward --q " + out + "/q.npy --k " +
                            out + "/k.npy --v " + out + "/v.npy --do " + out + "/do.npy --out " +
                            again);
  ASSERT_EQ(r2.code, 0) << r2.output;
  const Tensor o3 = read_npy(again + "/o.npy");
  const Tensor dk3 = read_npy(again + "/dk.npy");
  EXPECT_EQ(compare(o3.view(), o.view()).max_abs, 0.0);
  EXPECT_EQ(compare(dk3.view(), dk.view()).max_abs, 0.0);

  // A shape option beside --q is refused: the shape comes from the file.
  const Result r3 = run_cli("run --seq-len 64 --q " + out + "/q.npy --k " + out + "/k.npy --v " +
                            out + "/v.npy --out " + again);
  EXPECT_EQ(r3.code, 2) << r3.output;
  EXPECT_TRUE(contains(r3.output, "--seq-len")) << r3.output;
}

TEST_F(Cli, PatternSummaryAndJson) {
  const Result r = run_cli("pattern --pattern local_window --window-size 128 --seq-len 512 "
                           "--block-size 64");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "8 x 8 blocks")) << r.output;
  EXPECT_TRUE(contains(r.output, "density")) << r.output;
  EXPECT_TRUE(contains(r.output, "#")) << r.output;  // the picture
  const Result j = run_cli("pattern --preset ultra_sparse --seq-len 1024 --json");
  ASSERT_EQ(j.code, 0) << j.output;
  EXPECT_TRUE(contains(j.output, "\"density\"")) << j.output;
  EXPECT_TRUE(contains(j.output, "\"row_counts\"")) << j.output;
}

}  // namespace
}  // namespace longattn
