// The NCCL communicator on device buffers: the device table and its checks, ring exchanges that
// see the compute queued before them and are seen by the compute queued after them (events, no
// host synchronisation), sub-group all-gathers, zero-byte entries, device collectives, the host
// control plane, and the byte counters.
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_backend.hpp"
#include "multigpu_env.hpp"
#include "runtime/error.hpp"

namespace longattn {
namespace {

using testing::test_backend;
using testing::test_comm;

Tensor fetch(Backend& be, const DeviceTensor& t) {
  const TensorView v = t.view();
  Tensor h(DType::F64, v.B, v.N, v.H, v.D);
  be.download(h.view(), v);
  return h;
}

TEST(NcclComm, DeviceTableListsEveryRankOnItsOwnGpu) {
  NcclCommunicator& comm = test_comm();
  const auto& table = comm.devices();
  ASSERT_EQ(static_cast<int>(table.size()), comm.world());
  std::set<std::string> uuids;
  for (int r = 0; r < comm.world(); ++r) {
    EXPECT_EQ(table[r].rank, r);
    EXPECT_FALSE(table[r].name.empty());
    EXPECT_GT(table[r].total_bytes, 0u);
    uuids.insert(table[r].uuid);
  }
  EXPECT_EQ(static_cast<int>(uuids.size()), comm.world()) << comm.device_table();
  EXPECT_EQ(table[comm.rank()].device, comm.device());
  EXPECT_EQ(comm.backend(), "nccl");
  EXPECT_EQ(comm.buffer_device(), DeviceKind::Cuda);
  const std::string text = comm.device_table();
  for (const auto& g : table) EXPECT_NE(text.find(g.uuid.substr(0, 12)), std::string::npos);
}

// The checks every rank applies to the gathered table, on tables made up here.
TEST(NcclComm, TableChecksRejectSharedGpusAndTooManyRanks) {
  GpuRankInfo a;
  a.host = "node-a";
  a.name = "GPU";
  a.device_count = 2;
  a.uuid = "GPU-11111111-0000-0000-0000-000000000000";
  GpuRankInfo b = a;
  b.rank = 1;
  b.local_rank = 1;
  b.device = 1;
  b.uuid = "GPU-22222222-0000-0000-0000-000000000000";
  EXPECT_NO_THROW(check_gpu_table({a, b}));
  GpuRankInfo shared = b;
  shared.uuid = a.uuid;  // e.g. CUDA_VISIBLE_DEVICES giving both ranks the same card
  try {
    check_gpu_table({a, shared});
    ADD_FAILURE() << "two ranks on one GPU were accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("share one GPU"), std::string::npos) << e.what();
  }
  GpuRankInfo third = b;
  third.rank = 2;
  third.local_rank = 2;
  third.uuid = "GPU-33333333-0000-0000-0000-000000000000";
  try {
    check_gpu_table({a, b, third});
    ADD_FAILURE() << "three ranks on a host with two GPUs were accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("more ranks than GPUs"), std::string::npos) << e.what();
  }
  GpuRankInfo broken = b;
  broken.uuid.clear();
  broken.name = "device index out of range";
  EXPECT_THROW(check_gpu_table({a, broken}), InvalidArgument);
}

// A send must carry what the backend computed just before it, and the backend's next kernel
// must see what arrived, with no host synchronisation in between: 64 MiB buffers are filled on
// the work stream and sent at once, and the received buffer is scaled on the work stream before
// anything waits on the host.
TEST(NcclComm, RingExchangeIsOrderedAgainstTheWorkStream) {
  NcclCommunicator& comm = test_comm();
  Backend& be = test_backend();
  constexpr int64_t kFloats = int64_t{16} << 20;
  DeviceTensor send(be, DType::F32, 1, kFloats, 1, 1), recv(be, DType::F32, 1, kFloats, 1, 1);
  const NcclStats before = comm.stats();
  for (int round = 0; round < 3; ++round) {
    be.fill(recv.view(), -1.0);
    be.fill(send.view(), 1000.0 * round + comm.rank());
    CommRequest req = comm.start_sendrecv_ring(send.data(), recv.data(), kFloats * sizeof(float),
                                               comm.next(), comm.prev(),
                                               CommOp{"test ring", round});
    req.wait();
    be.scale(recv.view(), 2.0);
    const Tensor got = fetch(be, recv);
    const double want = 2.0 * (1000.0 * round + comm.prev());
    EXPECT_EQ(got.at(0, 0, 0, 0), want);
    EXPECT_EQ(got.at(0, kFloats / 2, 0, 0), want);
    EXPECT_EQ(got.at(0, kFloats - 1, 0, 0), want);
  }
  const NcclStats after = comm.stats();
  if (comm.world() > 1) {
    EXPECT_EQ(after.exchanges - before.exchanges, 3);
    EXPECT_EQ(after.bytes_sent - before.bytes_sent, 3 * kFloats * 4);
    EXPECT_EQ(after.bytes_received - before.bytes_received, 3 * kFloats * 4);
  }
}

// Several exchanges in flight at once (as the ring's backward keeps K/V and dK/dV moving), each
// waited in the order posted; zero-byte entries are skipped.
TEST(NcclComm, OverlappingExchangesAndZeroByteEntries) {
  NcclCommunicator& comm = test_comm();
  Backend& be = test_backend();
  const int64_t n = 1 << 20;
  DeviceTensor a(be, DType::F32, 1, n, 1, 1), b(be, DType::F32, 1, n, 1, 1),
      ra(be, DType::F32, 1, n, 1, 1), rb(be, DType::F32, 1, n, 1, 1);
  be.fill(a.view(), comm.rank() + 0.5);
  be.fill(b.view(), -comm.rank() - 0.25);
  const size_t bytes = n * sizeof(float);
  CommRequest first = comm.start_exchange({SendSpec{a.data(), bytes, comm.next()}},
                                          {RecvSpec{ra.data(), bytes, comm.prev()},
                                           RecvSpec{nullptr, 0, comm.prev()}},
                                          CommOp{"first", 0});
  CommRequest second = comm.start_exchange({SendSpec{b.data(), bytes, comm.prev()},
                                            SendSpec{nullptr, 0, comm.next()}},
                                           {RecvSpec{rb.data(), bytes, comm.next()}},
                                           CommOp{"second", 0});
  first.wait();
  second.wait();
  EXPECT_EQ(fetch(be, ra).at(0, n - 1, 0, 0), comm.prev() + 0.5);
  EXPECT_EQ(fetch(be, rb).at(0, 0, 0, 0), -comm.next() - 0.25);
  // Nothing to move: an empty request, nothing counted.
  const int64_t exchanges = comm.stats().exchanges;
  CommRequest none = comm.start_exchange({SendSpec{nullptr, 0, comm.next()}},
                                         {RecvSpec{nullptr, 0, comm.prev()}}, CommOp{"empty", 0});
  EXPECT_FALSE(none.active());
  EXPECT_EQ(comm.stats().exchanges, exchanges);
  EXPECT_THROW(comm.start_exchange({SendSpec{a.data(), bytes, comm.world()}}, {}, CommOp{}),
               InvalidArgument);
}

// All-gather within the sub-group of even ranks (odd ranks form their own), sizes per member.
TEST(NcclComm, SubGroupAllGatherWithUnequalSizes) {
  NcclCommunicator& comm = test_comm();
  Backend& be = test_backend();
  std::vector<int> group;
  for (int r = comm.rank() % 2; r < comm.world(); r += 2) group.push_back(r);
  std::vector<size_t> bytes;
  std::vector<DeviceTensor> slots;
  std::vector<void*> recv;
  for (int r : group) {
    const int64_t n = 1000 + 37 * r;
    bytes.push_back(n * sizeof(float));
    slots.emplace_back(be, DType::F32, 1, n, 1, 1);
    recv.push_back(r == comm.rank() ? nullptr : slots.back().data());
  }
  DeviceTensor mine(be, DType::F32, 1, 1000 + 37 * comm.rank(), 1, 1);
  be.fill(mine.view(), 7.0 * comm.rank() + 1.0);
  comm.allgather_group(group, mine.data(), bytes, recv, CommOp{"sub-group all-gather", -1});
  for (size_t i = 0; i < group.size(); ++i) {
    if (group[i] == comm.rank()) continue;
    const Tensor got = fetch(be, slots[i]);
    EXPECT_EQ(got.at(0, 0, 0, 0), 7.0 * group[i] + 1.0);
    EXPECT_EQ(got.at(0, got.view().N - 1, 0, 0), 7.0 * group[i] + 1.0);
  }
}

TEST(NcclComm, DeviceCollectivesAndHostControlPlane) {
  NcclCommunicator& comm = test_comm();
  Backend& be = test_backend();
  const int P = comm.world();
  for (DType dt : {DType::F32, DType::F64}) {
    DeviceTensor x(be, dt, 1, 3000, 1, 1);
    be.fill(x.view(), comm.rank() + 1.0);
    comm.allreduce(x.data(), 3000, dt, ReduceOp::Sum, CommOp{"test all-reduce", -1});
    EXPECT_EQ(fetch(be, x).at(0, 2999, 0, 0), P * (P + 1) / 2.0) << dtype_name(dt);
    be.fill(x.view(), comm.rank() + 1.0);
    comm.allreduce(x.data(), 3000, dt, ReduceOp::Max, CommOp{"test all-reduce", -1});
    EXPECT_EQ(fetch(be, x).at(0, 0, 0, 0), static_cast<double>(P)) << dtype_name(dt);
  }
  DeviceTensor y(be, DType::F32, 1, 4096, 1, 1);
  be.fill(y.view(), comm.rank() == P - 1 ? 42.0 : 0.0);
  comm.broadcast(y.data(), 4096 * sizeof(float), P - 1, CommOp{"test broadcast", -1});
  EXPECT_EQ(fetch(be, y).at(0, 4095, 0, 0), 42.0);
  EXPECT_THROW(comm.allreduce(y.data(), 1, DType::BF16, ReduceOp::Sum, CommOp{}), InvalidArgument);

  const int64_t mine = 100 + comm.rank();
  std::vector<int64_t> all(P);
  comm.allgather_host(&mine, sizeof(mine), all.data(), CommOp{"host all-gather", -1});
  for (int r = 0; r < P; ++r) EXPECT_EQ(all[r], 100 + r);
  double v[2] = {1.0 * comm.rank(), 2.0};
  comm.allreduce_host(v, 2, ReduceOp::Sum, CommOp{"host all-reduce", -1});
  EXPECT_EQ(v[0], P * (P - 1) / 2.0);
  EXPECT_EQ(v[1], 2.0 * P);
  comm.barrier(CommOp{"test barrier", -1});
}

}  // namespace
}  // namespace longattn
