// `longattn bench` as users run it (one process; tests/CMakeLists.txt adds a run under mpirun):
// the table with #wrong = 0, the JSON and CSV with their documented fields, the check catching
// a perturbed output, the regression check against a baseline made faster or slower, the
// longest-sequence search stopping at --max-n and at the trial time limit, and the scripts of
// bench/ parsing. Sizes are tiny: each command takes well under a few seconds.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace longattn {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string cli_path() {
#ifdef LONGATTN_CLI_PATH
  if (fs::exists(LONGATTN_CLI_PATH)) return LONGATTN_CLI_PATH;
#endif
  return (fs::read_symlink("/proc/self/exe").parent_path() / "longattn").string();
}

// The source tree: this file is tests/cpu/test_bench.cpp.
fs::path source_root() { return fs::path(__FILE__).parent_path().parent_path().parent_path(); }

struct Result {
  int code = -1;
  std::string output;
};

Result run_shell(const std::string& cmd) {
  Result r;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

Result bench(const std::string& args) {
  // Plain runs: a launcher's environment would make the command initialise MPI.
  return run_shell(
      "env -u OMPI_COMM_WORLD_SIZE -u PMI_SIZE -u PMI_RANK -u PMIX_RANK "
      "LONGATTN_CPU_THREADS=2 '" +
      cli_path() + "' bench --quiet " + args);
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

json read_json(const fs::path& p) {
  std::ifstream in(p);
  return json::parse(in);
}

// The table's data rows (lines of the table that are neither '#' lines nor progress).
std::vector<std::vector<std::string>> table_rows(const std::string& out) {
  std::vector<std::vector<std::string>> rows;
  std::istringstream is(out);
  std::string line;
  while (std::getline(is, line)) {
    if (line.rfind("  ", 0) != 0) continue;
    std::istringstream ws(line);
    std::vector<std::string> words;
    std::string w;
    while (ws >> w) words.push_back(w);
    rows.push_back(words);
  }
  return rows;
}

class Bench : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(cli_path())) GTEST_SKIP() << "longattn binary not found at " << cli_path();
    std::string tmpl = (fs::temp_directory_path() / "longattn_bench_XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  fs::path dir_;
};

constexpr const char* kTiny =
    "--heads 3 --head-dim 16 --max-seconds 0.05 --repeats 3 --min-repeats 2";

TEST_F(Bench, TinySuiteTableJsonAndCsv) {
  const fs::path j = dir_ / "b.json", c = dir_ / "b.csv";
  const Result r = bench(std::string("--suite implementations -n 256 -b 1 --pass fwd bwd ") +
                         kTiny + " --json " + j.string() + " --csv " + c.string());
  ASSERT_EQ(r.code, 0) << r.output;
  // Header: version, command, arguments, the device table, dtype; a units row.
  for (const char* part :
       {"# longattn bench", "# command: ", "bench --quiet --suite implementations",
        "# arguments: ", "#  Rank   0", "dtype fp32", "#wrong", "tokens", "ms"})
    EXPECT_TRUE(contains(r.output, part)) << part << "\n" << r.output;
  // 6 variants (dense, dilated groups and longnet, block-sparse at 3 ratios) x 2 passes, every
  // sampled row within tolerance: the #wrong column (second to last) reads 0.
  const auto rows = table_rows(r.output);
  ASSERT_EQ(rows.size(), 12u) << r.output;
  for (const auto& w : rows) {
    ASSERT_GE(w.size(), 3u);
    EXPECT_EQ(w[w.size() - 2], "0") << r.output;
    EXPECT_EQ(w.back(), "ok") << r.output;
  }

  const json doc = read_json(j);
  for (const char* k : {"command", "args", "environment", "versions", "devices", "rows", "timing",
                        "flops_convention", "check", "date"})
    EXPECT_TRUE(doc.contains(k)) << k;
  EXPECT_TRUE(doc["complete"].get<bool>());
  EXPECT_TRUE(doc["versions"].contains("longattn"));
  EXPECT_TRUE(doc["versions"].contains("git"));
  ASSERT_EQ(doc["devices"].size(), 1u);
  EXPECT_EQ(doc["args"]["suite"], "implementations");
  ASSERT_EQ(doc["rows"].size(), 12u);
  int sparse_rows = 0;
  for (const auto& row : doc["rows"]) {
    for (const char* k :
         {"variant", "mode", "N", "B", "H", "D", "dtype", "causal", "pass", "median_ms", "p10_ms",
          "p90_ms", "tflops", "density", "peak_bytes", "check_rows", "wrong", "flops", "status"})
      EXPECT_TRUE(row.contains(k)) << k << " in " << row.dump();
    EXPECT_EQ(row["status"], "ok");
    EXPECT_EQ(row["wrong"], 0);
    EXPECT_EQ(row["check_rows"], 8);
    EXPECT_LE(row["p10_ms"].get<double>(), row["median_ms"].get<double>());
    EXPECT_LE(row["median_ms"].get<double>(), row["p90_ms"].get<double>());
    EXPECT_GT(row["tflops"].get<double>(), 0.0);
    EXPECT_GT(row["peak_bytes"].get<double>(), 0.0);
    EXPECT_GT(row["density"].get<double>(), 0.0);
    EXPECT_LE(row["density"].get<double>(), 1.0);
    if (row["variant"].get<std::string>().rfind("block_sparse", 0) == 0) {
      ++sparse_rows;
      EXPECT_TRUE(row.contains("speedup_vs_dense")) << row.dump();
      EXPECT_LT(row["density"].get<double>(), 1.0);
    }
  }
  EXPECT_EQ(sparse_rows, 6);

  // CSV: '#' lines with the command, versions and devices, one header line, one line per row.
  std::ifstream in(c);
  std::string line, header;
  int comments = 0, lines = 0;
  while (std::getline(in, line)) {
    if (line.rfind("#", 0) == 0) {
      ++comments;
      continue;
    }
    if (header.empty())
      header = line;
    else
      ++lines;
  }
  EXPECT_GE(comments, 4);
  EXPECT_EQ(lines, 12);
  for (const char* f : {"variant", "mode", "median_ms", "p10_ms", "p90_ms", "tflops", "density",
                        "peak_bytes", "comm_bytes", "comm_gbps", "efficiency", "wrong"})
    EXPECT_TRUE(contains(header, f)) << f << " in " << header;
}

TEST_F(Bench, DistributedModesInOneProcessCheckClean) {
  const fs::path j = dir_ / "s.json";
  const Result r = bench(std::string("--suite scaling --local-n 128 -n 256 --pass fwd ") + kTiny +
                         " --check-rows 4 --json " + j.string());
  ASSERT_EQ(r.code, 0) << r.output;
  const json doc = read_json(j);
  int distributed = 0, with_eff = 0;
  for (const auto& row : doc["rows"]) {
    EXPECT_EQ(row["status"], "ok") << row.dump();
    EXPECT_EQ(row["wrong"], 0) << row.dump();
    if (row["mode"] != "single") {
      ++distributed;
      EXPECT_TRUE(row.contains("comm_bytes")) << row.dump();
      with_eff += row.contains("efficiency") ? 1 : 0;
    }
  }
  EXPECT_GE(distributed, 8);
  EXPECT_EQ(with_eff, distributed);  // every distributed row found its single-rank baseline
}

TEST_F(Bench, PerturbedOutputIsCountedWrong) {
  for (const char* dtype : {"fp64", "bf16"}) {
    const Result r = bench(std::string("-n 128 --variant dilated --segment-lengths 32,64,128 "
                                       "--heads 3 --head-dim 16 --repeats 1 --warmup 0 --dtype ") +
                           dtype + " --perturb-output 0.05");
    EXPECT_EQ(r.code, 3) << r.output;
    EXPECT_TRUE(contains(r.output, "#wrong: 8 of 8")) << r.output;
    const Result ok = bench(std::string("-n 128 --variant dilated --segment-lengths 32,64,128 "
                                        "--heads 3 --head-dim 16 --repeats 1 --warmup 0 --dtype ") +
                            dtype);
    EXPECT_EQ(ok.code, 0) << ok.output;
    EXPECT_TRUE(contains(ok.output, "#wrong: 0 of 8")) << ok.output;
  }
}

TEST_F(Bench, RegressionFailsAgainstAFasterBaseline) {
  const fs::path base = dir_ / "base.json";
  const std::string args = std::string("--suite regression -n 128 ") + kTiny;
  const Result first = bench(args + " --json " + base.string());
  ASSERT_EQ(first.code, 0) << first.output;
  json doc = read_json(base);
  ASSERT_GE(doc["rows"].size(), 5u);
  auto scaled = [&](double factor, const fs::path& p) {
    json d = doc;
    for (auto& row : d["rows"])
      if (row.contains("median_ms")) row["median_ms"] = row["median_ms"].get<double>() * factor;
    std::ofstream(p) << d.dump(1);
  };
  scaled(0.01, dir_ / "fast.json");  // wide margins: tiny timings jitter on a loaded machine
  scaled(100.0, dir_ / "slow.json");
  const Result fast = bench(args + " --baseline " + (dir_ / "fast.json").string());
  EXPECT_EQ(fast.code, 4) << fast.output;
  EXPECT_TRUE(contains(fast.output, "SLOWER")) << fast.output;
  EXPECT_TRUE(contains(fast.output, "5 slower beyond the threshold")) << fast.output;
  const Result slow = bench(args + " --baseline " + (dir_ / "slow.json").string());
  EXPECT_EQ(slow.code, 0) << slow.output;
  EXPECT_TRUE(contains(slow.output, "0 slower beyond the threshold")) << slow.output;
  // A baseline that is not a bench file is the user's argument.
  std::ofstream(dir_ / "junk.json") << "{\"x\": 1}";
  const Result junk = bench(args + " --baseline " + (dir_ / "junk.json").string());
  EXPECT_EQ(junk.code, 2) << junk.output;
  EXPECT_TRUE(contains(junk.output, "--baseline")) << junk.output;
}

TEST_F(Bench, MaxseqStopsAtMaxNAndAtTheTimeLimit) {
  const fs::path j = dir_ / "m.json";
  const Result r = bench(
      "--suite maxseq --modes dense block_sparse:fwd --heads 2 --head-dim 16 "
      "--min-n 512 --max-n 2048 --granularity 512 --json " +
      j.string());
  ASSERT_EQ(r.code, 0) << r.output;
  const json doc = read_json(j);
  ASSERT_EQ(doc["maxseq"].size(), 2u);
  for (const auto& s : doc["maxseq"]) {
    EXPECT_EQ(s["largest_n"], 2048) << s.dump();
    EXPECT_EQ(s["stopped_by"], "max-n") << s.dump();
    EXPECT_GT(s["time_ms"].get<double>(), 0.0);
    EXPECT_GT(s["peak_bytes"].get<double>(), 0.0);
  }
  EXPECT_EQ(doc["maxseq"][0]["pass"], "fwd+bwd");
  EXPECT_EQ(doc["maxseq"][1]["pass"], "fwd");
  EXPECT_TRUE(contains(r.output, "# maxseq dense")) << r.output;
  // Trials of 512, 1024, 2048 for each mode, all exact.
  ASSERT_EQ(doc["rows"].size(), 6u);
  for (const auto& row : doc["rows"]) EXPECT_EQ(row["wrong"], 0) << row.dump();

  // A --max-n that doubling steps over is tried itself: 512, 1024, then 1536 (not 2048).
  const Result c = bench(
      "--suite maxseq --modes block_sparse:fwd dilated_longnet --heads 2 --head-dim 16 "
      "--min-n 512 --max-n 1536 --granularity 512 --segment-lengths 128,256,512 --json " +
      j.string());
  ASSERT_EQ(c.code, 0) << c.output;
  const json doc3 = read_json(j);
  ASSERT_EQ(doc3["maxseq"].size(), 2u);
  for (const auto& s : doc3["maxseq"]) {
    EXPECT_EQ(s["largest_n"], 1536) << s.dump();
    EXPECT_EQ(s["stopped_by"], "max-n") << s.dump();
  }
  EXPECT_EQ(doc3["maxseq"][1]["variant"], "dilated/longnet") << doc3["maxseq"].dump();
  ASSERT_EQ(doc3["rows"].size(), 6u);
  EXPECT_EQ(doc3["rows"][2]["N"], 1536) << doc3["rows"].dump();
  for (const auto& row : doc3["rows"]) EXPECT_EQ(row["wrong"], 0) << row.dump();

  // A limit far below any trial: the first trial still runs (nothing predicts it), passes and
  // stops the search.
  const Result t = bench(
      "--suite maxseq --heads 2 --head-dim 16 --min-n 512 --max-n 65536 "
      "--granularity 512 --trial-seconds 0.000001 --json " +
      j.string());
  ASSERT_EQ(t.code, 0) << t.output;
  const json doc2 = read_json(j);
  EXPECT_EQ(doc2["maxseq"][0]["largest_n"], 512) << doc2["maxseq"].dump();
  EXPECT_EQ(doc2["maxseq"][0]["stopped_by"], "time") << doc2["maxseq"].dump();
  EXPECT_EQ(doc2["rows"].size(), 1u);
}

TEST_F(Bench, InvalidArgumentsExitTwo) {
  const std::pair<std::string, std::string> cases[] = {
      {"--suite nope", "--suite"},
      {"--pass sideways -n 128", "--pass"},
      {"--causal maybe -n 128", "--causal"},
      {"--ratios 1.5 --suite sparsity", "--ratios"},
      {"--suite maxseq --modes quantum", "--modes"},
      {"--suite maxseq --min-n 4096 --max-n 1024", "--max-n"},
      {"--suite regression", "--baseline"},
      {"--dtype fp64 --device cuda", "--dtype"},
  };
  for (const auto& [args, name] : cases) {
    const Result r = bench(args);
    EXPECT_EQ(r.code, 2) << args << "\n" << r.output;
    EXPECT_TRUE(contains(r.output, name)) << args << "\n" << r.output;
  }
  const Result help = bench("--help");
  EXPECT_EQ(help.code, 0);
  EXPECT_TRUE(contains(help.output, "Usage: longattn bench")) << help.output;
}

TEST_F(Bench, ScriptsOfBenchParse) {
  if (run_shell("python3 --version").code != 0) GTEST_SKIP() << "no python3";
  const fs::path root = source_root();
  for (const char* script : {"bench/plot", "bench/suite_anchors.py"}) {
    const fs::path p = root / script;
    ASSERT_TRUE(fs::exists(p)) << p;
    const Result r = run_shell(
        "python3 -c \"import ast,sys; ast.parse(open(sys.argv[1]).read())\" '" + p.string() + "'");
    EXPECT_EQ(r.code, 0) << script << "\n" << r.output;
  }
  const Result sh = run_shell("bash -n '" + (root / "bench/run_suites_gpu.sh").string() + "'");
  EXPECT_EQ(sh.code, 0) << sh.output;
}

// The anchors' timer (bench/anchors.py) makes one setup call, counted nowhere, then warms a row
// up for at least `warmup` calls and warm_ms of GPU time, within a third of the row's budget, as
// kernel_bench does; checked with a stand-in for torch whose events say every call took 10 ms.
TEST_F(Bench, AnchorTimerWarmsUpByTime) {
  if (run_shell("python3 --version").code != 0) GTEST_SKIP() << "no python3";
  const fs::path dir = source_root() / "bench";
  const std::string script = R"PY(
import sys
sys.path.insert(0, sys.argv[1])
import anchors

class Event:
    def __init__(self, enable_timing=True): pass
    def record(self): pass
    def synchronize(self): pass
    def elapsed_time(self, other): return 10.0

class Torch:
    class cuda:
        Event = Event

calls = [0]
def fn(): calls[0] += 1

def count(warmup, repeats, max_seconds, warm_ms):
    calls[0] = 0
    r = anchors.Timer(Torch, warmup, repeats, max_seconds, warm_ms)(fn)
    return calls[0], r["repeats"]

print(count(3, 20, 3.0, 300.0))  # setup, 30 warm-up calls (300 ms), 20 timed
print(count(3, 20, 3.0, 0.0))    # setup, 3 warm-up calls, 20 timed
print(count(3, 20, 0.3, 300.0))  # setup, warm-up cut at a third of 0.3 s: 11 calls, 20 timed
)PY";
  const fs::path py = fs::temp_directory_path() /
                       ("longattn_anchor_timer_" + std::to_string(getpid()) + ".py");
  {
    std::ofstream f(py);
    f << script;
  }
  const Result r = run_shell("python3 '" + py.string() + "' '" + dir.string() + "'");
  fs::remove(py);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output, "(51, 20)\n(24, 20)\n(32, 20)\n");
}

}  // namespace
}  // namespace longattn
