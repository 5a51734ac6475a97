// Entry point of the multigpu test binary: one MPI rank per GPU. Skips (exit 0, with a message)
// when a host runs more ranks than it has GPUs; otherwise bootstraps the NCCL communicator,
// runs every test on every rank (rank 0 prints the report, other ranks their failures) and
// fails when any rank failed. LONGATTN_MULTIGPU_FAULT=kill runs the killed-rank scenario
// instead (tests/multigpu/fault_check.cmake drives it and checks the diagnosis).
#include <gtest/gtest.h>

#include <csignal>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <vector>

#include "comm/mpi_communicator.hpp"
#include "comm/nccl/nccl_communicator.hpp"
#include "kernels/cuda/cuda_backend.hpp"
#include "multigpu_env.hpp"
#include "runtime/error.hpp"

namespace longattn::testing {
namespace {

GpuRank g_gpu;

class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::cerr << "[rank " << rank_ << "] " << (r.file_name() ? r.file_name() : "?") << ":"
              << r.line_number() << ": failure\n"
              << r.summary() << std::endl;
  }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Failed())
      std::cerr << "[rank " << rank_ << "] FAILED " << info.test_suite_name() << "." << info.name()
                << std::endl;
  }

 private:
  int rank_;
};

// Rank 1 is killed (SIGKILL) in the middle of a ring of NCCL exchanges on 64 MiB device
// buffers. The survivors must not hang: their wait times out or NCCL reports the dead peer,
// and they do what every longattn program does with a CommError: report it and abort the job.
int run_kill_scenario(const RankInfo& info) {
  auto gpu = make_gpu_rank(comm_options_from_env(), false);
  NcclCommunicator& comm = *gpu.comm;
  Backend& be = *gpu.backend;
  constexpr int64_t kFloats = int64_t{16} << 20;
  DeviceTensor send(be, DType::F32, 1, kFloats, 1, 1), recv(be, DType::F32, 1, kFloats, 1, 1);
  be.fill(send.view(), info.rank);
  const size_t bytes = static_cast<size_t>(kFloats) * sizeof(float);
  try {
    for (int step = 0; step < 1000; ++step) {
      if (step == 2 && info.rank == 1) {
        std::cerr << "rank 1: killing itself in ring step 2 (fault scenario)" << std::endl;
        std::raise(SIGKILL);
      }
      comm.sendrecv_ring(send.data(), recv.data(), bytes, comm.next(), comm.prev(),
                         CommOp{"fault scenario ring", step});
      be.copy(send.view(), recv.view());
    }
    std::cerr << "rank " << info.rank << ": the ring finished although rank 1 was killed"
              << std::endl;
    return 4;
  } catch (const CommError& e) {
    std::cerr << "longattn rank " << info.rank << ": communication error: " << e.what()
              << std::endl;
    mpi_abort(1);
  }
}

}  // namespace

NcclCommunicator& test_comm() { return *g_gpu.comm; }
Backend& test_backend() { return *g_gpu.backend; }

}  // namespace longattn::testing

int main(int argc, char** argv) {
  namespace la = longattn;
  la::MpiSession session(&argc, &argv);
  const la::RankInfo& info = session.info();
  // Every rank needs its own GPU; fewer GPUs than ranks on any host skips the whole binary.
  const int visible = la::cuda_device_count();
  int short_of_gpus = info.local_world > visible ? 1 : 0, any_short = 0;
  MPI_Allreduce(&short_of_gpus, &any_short, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (any_short) {
    if (info.rank == 0)
      std::cout << "multigpu tests SKIPPED: " << info.world << " rank(s) need one GPU each, but "
                << "a host has fewer visible (" << visible << " on " << info.host << ")"
                << std::endl;
    return 0;
  }
  if (const char* fault = std::getenv("LONGATTN_MULTIGPU_FAULT")) {
    if (std::string(fault) != "kill") {
      if (info.rank == 0) std::cerr << "unknown LONGATTN_MULTIGPU_FAULT " << fault << std::endl;
      return 2;
    }
    return la::testing::run_kill_scenario(info);
  }

  la::CommOptions opts;
  opts.timeout_seconds = la::testing::kTestTimeoutSeconds;
  try {
    la::testing::g_gpu = la::make_gpu_rank(opts, true);
  } catch (const std::exception& e) {
    std::cerr << "longattn rank " << info.rank << ": GPU bootstrap failed: " << e.what()
              << std::endl;
    la::mpi_abort(1);
  }
  ::testing::InitGoogleTest(&argc, argv);
  if (info.rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new la::testing::RankFailurePrinter(info.rank));
  }
  const int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int any_failed = failed;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (info.rank == 0 && any_failed && !failed)
    std::cerr << "longattn multigpu tests: another rank failed (see its [rank N] lines)"
              << std::endl;
  la::testing::g_gpu.comm.reset();
  la::testing::g_gpu.backend.reset();
  return any_failed;
}
