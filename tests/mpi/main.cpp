// Entry point of the mpi test binary: initialises MPI, runs every test on every rank (rank 0
// prints the usual report, other ranks print their failures with a rank prefix), and fails the
// process when any rank failed. LONGATTN_MPI_FAULT=silent|die runs a fault scenario instead
// (tests/mpi/fault_check.cmake drives it through mpirun and checks the exit and the message).
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <thread>

#include "comm/mpi_communicator.hpp"
#include "mpi_env.hpp"
#include "runtime/error.hpp"
#include "runtime/logging.hpp"
#include "runtime/tensor.hpp"

namespace longattn::testing {
namespace {

std::unique_ptr<Communicator> g_comm;
std::unique_ptr<Backend> g_backend;

// Failures of ranks other than 0, one line each, so the report shows which rank failed.
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

// A rank that never answers (silent) or dies (die) while the others run a ring exchange.
// The program's main reacts to CommError as every longattn program should: report and abort
// every rank. Rank 1 is the faulty one; run with at least two ranks.
int run_fault_scenario(const std::string& fault, const RankInfo& info) {
  MpiCommunicator comm(MPI_COMM_WORLD, comm_options_from_env());
  std::vector<double> send(1024, info.rank), recv(1024);
  comm.barrier(CommOp{"fault scenario start", -1});
  if (info.rank == 1) {
    if (fault == "die") std::_Exit(3);
    std::this_thread::sleep_for(std::chrono::seconds(120));  // never answers
    return 0;
  }
  try {
    for (int step = 0; step < comm.world(); ++step)
      comm.sendrecv_ring(send.data(), recv.data(), send.size() * sizeof(double), comm.next(),
                         comm.prev(), CommOp{"fault scenario ring", step});
  } catch (const CommError& e) {
    std::cerr << "longattn rank " << info.rank << ": communication error: " << e.what()
              << std::endl;
    mpi_abort(1);
  }
  return 0;
}

}  // namespace

Communicator& test_comm() { return *g_comm; }
Backend& test_backend() { return *g_backend; }

}  // namespace longattn::testing

int main(int argc, char** argv) {
  namespace la = longattn;
  la::MpiSession session(&argc, &argv);
  if (const char* fault = std::getenv("LONGATTN_MPI_FAULT"))
    return la::testing::run_fault_scenario(fault, session.info());

  la::CommOptions opts;
  opts.timeout_seconds = la::testing::kTestTimeoutSeconds;
  la::testing::g_comm = std::make_unique<la::MpiCommunicator>(MPI_COMM_WORLD, opts);
  la::testing::g_backend = la::make_cpu_backend(1);
  ::testing::InitGoogleTest(&argc, argv);
  const int rank = session.info().rank;
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new la::testing::RankFailurePrinter(rank));
  }
  const int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int any_failed = failed;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0 && any_failed && !failed)
    std::cerr << "longattn mpi tests: another rank failed (see its [rank N] lines)" << std::endl;
  la::testing::g_comm.reset();
  la::testing::g_backend.reset();
  return any_failed;
}
