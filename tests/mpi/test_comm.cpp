// The Communicator over MPI: ring exchange, grouped exchanges of uneven sizes, sub-group
// all-gather, collectives, the host control plane, config-hash agreement, and timeouts when a
// peer never answers (the blocked wait must end in CommError naming the op, step and peer).
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <numeric>

#include "comm/mpi_communicator.hpp"
#include "mpi_env.hpp"
#include "runtime/bootstrap.hpp"
#include "runtime/error.hpp"

namespace longattn {
namespace {

using testing::test_comm;

TEST(Comm, RingSendRecvMovesEachBufferToTheNextRank) {
  Communicator& c = test_comm();
  const int P = c.world(), r = c.rank();
  std::vector<double> send(333), recv(333, -1.0);
  for (size_t i = 0; i < send.size(); ++i) send[i] = 1000.0 * r + static_cast<double>(i);
  c.sendrecv_ring(send.data(), recv.data(), send.size() * sizeof(double), c.next(), c.prev(),
                  CommOp{"test ring", 0});
  const int from = (r + P - 1) % P;
  for (size_t i = 0; i < recv.size(); ++i)
    ASSERT_EQ(recv[i], 1000.0 * from + static_cast<double>(i)) << "element " << i;
}

TEST(Comm, RingRotationVisitsEveryRankInOrder) {
  Communicator& c = test_comm();
  const int P = c.world(), r = c.rank();
  int held = r, incoming = -1;
  for (int step = 1; step < P; ++step) {
    c.sendrecv_ring(&held, &incoming, sizeof(int), c.next(), c.prev(), CommOp{"rotation", step});
    held = incoming;
    EXPECT_EQ(held, (r - step + P) % P) << "step " << step;
  }
}

TEST(Comm, ExchangeWithUnevenAndEmptyMessages) {
  Communicator& c = test_comm();
  const int P = c.world(), r = c.rank();
  // Rank r sends r + 1 ints to every rank (itself included) and nothing when the peer is odd
  // and r is even; receivers derive the same sizes.
  auto count = [](int from, int to) -> size_t {
    return (from % 2 == 0 && to % 2 == 1) ? 0 : static_cast<size_t>(from + 1);
  };
  std::vector<std::vector<int>> out(P), in(P);
  std::vector<SendSpec> sends;
  std::vector<RecvSpec> recvs;
  for (int p = 0; p < P; ++p) {
    out[p].assign(count(r, p), 10 * r + p);
    in[p].assign(count(p, r), -1);
    sends.push_back(SendSpec{out[p].data(), out[p].size() * sizeof(int), p});
    recvs.push_back(RecvSpec{in[p].data(), in[p].size() * sizeof(int), p});
  }
  c.start_exchange(sends, recvs, CommOp{"uneven exchange", -1}).wait();
  for (int p = 0; p < P; ++p)
    for (int x : in[p]) EXPECT_EQ(x, 10 * p + r) << "from rank " << p;
}

TEST(Comm, AllGatherWithinASubGroup) {
  Communicator& c = test_comm();
  const int P = c.world(), r = c.rank();
  // Two groups: even ranks and odd ranks; member i contributes i + 2 doubles.
  std::vector<int> group;
  for (int p = r % 2; p < P; p += 2) group.push_back(p);
  std::vector<size_t> bytes;
  std::vector<std::vector<double>> slots;
  for (size_t i = 0; i < group.size(); ++i) {
    bytes.push_back((i + 2) * sizeof(double));
    slots.emplace_back(i + 2, -1.0);
  }
  const size_t me = static_cast<size_t>(std::find(group.begin(), group.end(), r) - group.begin());
  std::vector<double> mine(me + 2, 0.5 + r);
  std::vector<void*> recv;
  for (auto& s : slots) recv.push_back(s.data());
  c.allgather_group(group, mine.data(), bytes, recv, CommOp{"group gather", -1});
  for (size_t i = 0; i < group.size(); ++i) {
    if (i == me) {
      for (double x : slots[i]) EXPECT_EQ(x, -1.0) << "own slot must stay untouched";
      continue;
    }
    for (double x : slots[i]) EXPECT_EQ(x, 0.5 + group[i]) << "member " << group[i];
  }
}

TEST(Comm, CollectivesAndHostControlPlane) {
  Communicator& c = test_comm();
  const int P = c.world(), r = c.rank();
  std::vector<double> d{1.0 + r, -2.0 * r};
  c.allreduce(d.data(), d.size(), DType::F64, ReduceOp::Sum, CommOp{"sum", -1});
  EXPECT_EQ(d[0], P + P * (P - 1) / 2.0);
  EXPECT_EQ(d[1], -1.0 * P * (P - 1));
  std::vector<float> f{static_cast<float>(r), 0.25f};
  c.allreduce(f.data(), f.size(), DType::F32, ReduceOp::Max, CommOp{"max", -1});
  EXPECT_EQ(f[0], static_cast<float>(P - 1));
  EXPECT_EQ(f[1], 0.25f);
  EXPECT_THROW(c.allreduce(f.data(), 1, DType::F16, ReduceOp::Sum, CommOp{}), InvalidArgument);

  int64_t value = r == P - 1 ? 4242 : -1;
  c.broadcast(&value, sizeof(value), P - 1, CommOp{"bcast", -1});
  EXPECT_EQ(value, 4242);
  c.barrier(CommOp{"barrier", -1});

  const int64_t mine = 7 * r + 1;
  std::vector<int64_t> all(P, -1);
  c.allgather_host(&mine, sizeof(mine), all.data(), CommOp{"gather", -1});
  for (int p = 0; p < P; ++p) EXPECT_EQ(all[p], 7 * p + 1);
  double h[2] = {static_cast<double>(r), 1.0};
  c.allreduce_host(h, 2, ReduceOp::Min, CommOp{"min", -1});
  EXPECT_EQ(h[0], 0.0);
  EXPECT_EQ(h[1], 1.0);
}

TEST(Comm, BootstrapReportsRankWorldAndLocalRank) {
  const RankInfo info = mpi_rank_info(MPI_COMM_WORLD);
  EXPECT_EQ(info.rank, test_comm().rank());
  EXPECT_EQ(info.world, test_comm().world());
  EXPECT_GE(info.local_rank, 0);
  EXPECT_LT(info.local_rank, info.local_world);
  EXPECT_LE(info.local_world, info.world);
  // All test ranks run on this host: the local ranks are 0 .. world-1.
  std::vector<int> locals(info.world);
  test_comm().allgather_host(&info.local_rank, sizeof(int), locals.data(), CommOp{});
  std::sort(locals.begin(), locals.end());
  for (int i = 0; i < info.world; ++i) EXPECT_EQ(locals[i], i);
}

TEST(Comm, TimeoutFromEnvironment) {
  const char* old = std::getenv("LONGATTN_COMM_TIMEOUT");
  const std::string saved = old ? old : "";
  unsetenv("LONGATTN_COMM_TIMEOUT");
  EXPECT_EQ(comm_timeout_from_env(), CommOptions::kDefaultTimeoutSeconds);
  setenv("LONGATTN_COMM_TIMEOUT", "2.5", 1);
  EXPECT_EQ(comm_timeout_from_env(), 2.5);
  for (const char* bad : {"abc", "-1", "0", "3s"}) {
    setenv("LONGATTN_COMM_TIMEOUT", bad, 1);
    try {
      comm_timeout_from_env();
      ADD_FAILURE() << bad << " accepted";
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("LONGATTN_COMM_TIMEOUT"), std::string::npos);
    }
  }
  if (old)
    setenv("LONGATTN_COMM_TIMEOUT", saved.c_str(), 1);
  else
    unsetenv("LONGATTN_COMM_TIMEOUT");
  EXPECT_THROW(test_comm().set_timeout_seconds(0.0), InvalidArgument);
}

TEST(Comm, ConfigHashMismatchFailsOnEveryRank) {
  Communicator& c = test_comm();
  EXPECT_NO_THROW(agree_on_config(c, "same everywhere", "test config"));
  if (c.world() < 2) GTEST_SKIP() << "needs two ranks to differ";
  const int odd = c.world() - 1;
  const std::string mine = c.rank() == odd ? "causal=1" : "causal=0";
  try {
    agree_on_config(c, mine, "test config");
    ADD_FAILURE() << "rank " << c.rank() << " accepted a differing config";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("rank " + std::to_string(odd)), std::string::npos) << msg;
    EXPECT_NE(msg.find("test config"), std::string::npos) << msg;
  }
  // The communicator is still in step: a collective after the failure completes.
  c.barrier(CommOp{"after mismatch", -1});
}

TEST(Comm, DistributedConfigMismatchFailsFastOnEveryRank) {
  Communicator& c = test_comm();
  if (c.world() < 2) GTEST_SKIP() << "needs two ranks to differ";
  AttentionSpec spec;
  spec.causal = c.rank() == 1;  // rank 1 believes in causal attention
  const auto t0 = std::chrono::steady_clock::now();
  try {
    make_distributed_attention(spec, DistConfig{}, c);
    ADD_FAILURE() << "rank " << c.rank() << " accepted a differing config";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank 1"), std::string::npos) << e.what();
  }
  // Fails at the agreement, long before any communication timeout.
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 10.0);
  c.barrier(CommOp{"after mismatch", -1});
}

// Rank 0 never answers: every other rank waits for it with a 2 s timeout and must get a
// CommError that names the operation, the ring step and rank 0, instead of hanging.
TEST(Comm, SilentPeerMakesTheWaitingRanksFailWithinTheTimeout) {
  Communicator& world = test_comm();
  if (world.world() < 2) GTEST_SKIP() << "needs a peer";
  CommOptions opts;
  opts.timeout_seconds = 2.0;
  // A separate communicator: the abandoned receives cannot disturb later tests.
  MpiCommunicator c(MPI_COMM_WORLD, opts);
  if (c.rank() != 0) {
    std::vector<char> buf(64);
    const auto t0 = std::chrono::steady_clock::now();
    try {
      c.start_exchange({}, {RecvSpec{buf.data(), buf.size(), 0}}, CommOp{"ring forward K/V", 3})
          .wait();
      ADD_FAILURE() << "the wait returned although rank 0 never sent";
    } catch (const CommError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("ring forward K/V"), std::string::npos) << msg;
      EXPECT_NE(msg.find("ring step 3"), std::string::npos) << msg;
      EXPECT_NE(msg.find("waiting for rank 0"), std::string::npos) << msg;
      EXPECT_NE(msg.find("LONGATTN_COMM_TIMEOUT"), std::string::npos) << msg;
    }
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_GE(waited, 2.0);
    EXPECT_LT(waited, 10.0);
    EXPECT_TRUE(c.broken());
    EXPECT_THROW(c.barrier(CommOp{"after timeout", -1}), CommError);
  }
  world.barrier(CommOp{"after silent-peer test", -1});
}

// A collective that one rank never joins also ends in CommError on the others.
TEST(Comm, CollectiveNeverJoinedTimesOut) {
  Communicator& world = test_comm();
  if (world.world() < 2) GTEST_SKIP() << "needs a peer";
  CommOptions opts;
  opts.timeout_seconds = 1.0;
  MpiCommunicator c(MPI_COMM_WORLD, opts);
  if (c.rank() != 0) {
    try {
      c.barrier(CommOp{"lonely barrier", -1});
      ADD_FAILURE() << "barrier completed without rank 0";
    } catch (const CommError& e) {
      EXPECT_NE(std::string(e.what()).find("lonely barrier"), std::string::npos) << e.what();
    }
  }
  world.barrier(CommOp{"after collective timeout test", -1});
  // Rank 0 joins late, so the barrier the others abandoned completes inside MPI.
  if (c.rank() == 0) c.barrier(CommOp{"late barrier", -1});
}

}  // namespace
}  // namespace longattn
