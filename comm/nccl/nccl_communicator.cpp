// The NCCL communicator: GPU selection and the device table checked on every rank, NCCL
// bootstrap over MPI, grouped send/receive and collectives on the communicator's stream ordered
// against the backend's work stream by events, and polling waits that abort the NCCL
// communicator on timeout or error.
#include "comm/nccl/nccl_communicator.hpp"

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>
#include <thread>

#include "comm/nccl/nccl_check.hpp"
#include "kernels/cuda/cuda_check.hpp"
#include "runtime/error.hpp"
#include "runtime/logging.hpp"

namespace longattn {
namespace {

using Clock = std::chrono::steady_clock;

// Makes `device` the calling thread's current device for the scope.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    CUDA_CHECK(cudaGetDevice(&prev_));
    if (prev_ != device) CUDA_CHECK(cudaSetDevice(device));
    device_ = device;
  }
  ~DeviceScope() {
    if (prev_ != device_) cudaSetDevice(prev_);  // best effort: destructors do not throw
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int prev_ = 0, device_ = 0;
};

// Pacing of a polling wait: a ring step's transfer usually completes within milliseconds and
// the host should notice at once (the next step's kernels are queued right after), so spin
// first; a long wait (a slow or dead peer) backs off to millisecond sleeps.
class PollPacer {
 public:
  void pause() {
    ++polls_;
    if (polls_ < kSpinPolls) return;
    const double waited = elapsed();
    if (waited < kYieldSeconds)
      std::this_thread::yield();
    else
      std::this_thread::sleep_for(waited < 1.0 ? std::chrono::microseconds(20)
                                               : std::chrono::microseconds(1000));
  }
  double elapsed() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

 private:
  static constexpr int kSpinPolls = 256;
  static constexpr double kYieldSeconds = 0.01;
  int polls_ = 0;
  Clock::time_point start_ = Clock::now();
};

std::string where(const std::string& name, int step) {
  std::ostringstream os;
  os << name;
  if (step >= 0) os << " (ring step " << step << ")";
  return os.str();
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024.0 && u < 4) {
    b /= 1024.0;
    ++u;
  }
  char buf[48];
  std::snprintf(buf, sizeof(buf), "%.1f %s", b, units[u]);
  return buf;
}

// One rank's GPU as it travels in the all-gather (plain bytes, identical layout everywhere).
struct GpuRecord {
  int32_t rank = 0, local_rank = 0, local_world = 1, device = 0, device_count = 0;
  int32_t readable = 0;  // the device's properties could be read
  uint64_t total_bytes = 0;
  char host[64] = {};
  char name[128] = {};  // device name, or why it could not be read
  unsigned char uuid[16] = {};
};

void copy_text(char* dst, size_t cap, const std::string& s) {
  std::snprintf(dst, cap, "%s", s.c_str());
}

std::string uuid_string(const unsigned char* u) {
  char buf[48];
  std::snprintf(buf, sizeof(buf),
                "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0],
                u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13],
                u[14], u[15]);
  return buf;
}

ncclDataType_t nccl_float_type(DType t) { return t == DType::F64 ? ncclFloat64 : ncclFloat32; }

ncclRedOp_t nccl_op(ReduceOp r) {
  switch (r) {
    case ReduceOp::Sum:
      return ncclSum;
    case ReduceOp::Max:
      return ncclMax;
    case ReduceOp::Min:
      return ncclMin;
  }
  return ncclSum;
}

}  // namespace

// ---- GPU selection and the device table ------------------------------------------------------

int select_local_device(MPI_Comm comm, CommOptions options) {
  const RankInfo info = mpi_rank_info(comm);
  MpiCommunicator mpi(comm, options);
  struct HostCount {
    int32_t local_world = 1, device_count = 0;
    char host[64] = {};
  } mine;
  mine.local_world = info.local_world;
  mine.device_count = cuda_device_count();
  copy_text(mine.host, sizeof(mine.host), info.host);
  std::vector<HostCount> all(static_cast<size_t>(mpi.world()));
  mpi.allgather_host(&mine, sizeof(mine), all.data(), CommOp{"GPU selection", -1});
  // Every rank holds the same table, so every rank reaches the same verdict.
  for (int r = 0; r < mpi.world(); ++r) {
    const HostCount& h = all[static_cast<size_t>(r)];
    if (h.local_world <= h.device_count) continue;
    const std::string host(h.host);
    throw InvalidArgument(
        "ranks per host", host + ": " + std::to_string(h.local_world) + " ranks",
        h.device_count == 0
            ? "rank " + std::to_string(r) + " sees no CUDA GPU (no device, no driver, or "
                  "CUDA_VISIBLE_DEVICES hides them)"
            : "more ranks than GPUs: the host has " + std::to_string(h.device_count) +
                  " visible GPU(s) and each rank needs its own; start at most " +
                  std::to_string(h.device_count) + " ranks per host");
  }
  return info.local_rank;
}

std::vector<GpuRankInfo> gather_gpu_table(MpiCommunicator& comm, int device) {
  const RankInfo info = mpi_rank_info(comm.handle());
  GpuRecord mine;
  mine.rank = info.rank;
  mine.local_rank = info.local_rank;
  mine.local_world = info.local_world;
  mine.device = device;
  mine.device_count = cuda_device_count();
  copy_text(mine.host, sizeof(mine.host), info.host);
  // A failure here must not throw on this rank alone (the others would wait in the gather):
  // it travels in the record and check_gpu_table fails every rank.
  if (device < 0 || device >= mine.device_count) {
    copy_text(mine.name, sizeof(mine.name),
              "device index out of range (" + std::to_string(mine.device_count) + " visible)");
  } else {
    cudaDeviceProp prop{};
    const cudaError_t e = cudaGetDeviceProperties(&prop, device);
    if (e != cudaSuccess) {
      cudaGetLastError();
      copy_text(mine.name, sizeof(mine.name), std::string(cudaGetErrorString(e)));
    } else {
      mine.readable = 1;
      mine.total_bytes = prop.totalGlobalMem;
      copy_text(mine.name, sizeof(mine.name), prop.name);
      std::memcpy(mine.uuid, prop.uuid.bytes, sizeof(mine.uuid));
    }
  }
  std::vector<GpuRecord> all(static_cast<size_t>(comm.world()));
  comm.allgather_host(&mine, sizeof(mine), all.data(), CommOp{"GPU table", -1});
  std::vector<GpuRankInfo> table;
  for (const GpuRecord& g : all) {
    GpuRankInfo t;
    t.rank = g.rank;
    t.local_rank = g.local_rank;
    t.local_world = g.local_world;
    t.device = g.device;
    t.device_count = g.device_count;
    t.host = g.host;
    t.name = g.name;
    t.uuid = g.readable ? uuid_string(g.uuid) : "";
    t.total_bytes = g.total_bytes;
    table.push_back(std::move(t));
  }
  return table;
}

void check_gpu_table(const std::vector<GpuRankInfo>& table) {
  // Unusable devices first, then the cause (too many ranks on a host), then its symptom (two
  // ranks on one GPU, which also catches CUDA_VISIBLE_DEVICES mistakes).
  for (const GpuRankInfo& g : table)
    if (g.uuid.empty())
      throw InvalidArgument("device", "rank " + std::to_string(g.rank) + " on " + g.host +
                                          ": CUDA device " + std::to_string(g.device),
                            "must be a usable GPU: " + g.name);
  std::map<std::string, std::pair<int, int>> per_host;  // host -> (ranks, fewest GPUs seen)
  for (const GpuRankInfo& g : table) {
    auto [it, fresh] = per_host.try_emplace(g.host, 0, g.device_count);
    it->second.first += 1;
    it->second.second = std::min(it->second.second, g.device_count);
  }
  for (const auto& [host, c] : per_host)
    if (c.first > c.second)
      throw InvalidArgument("ranks per host", host + ": " + std::to_string(c.first) + " ranks",
                            "more ranks than GPUs: the host has " + std::to_string(c.second) +
                                " visible GPU(s) and each rank needs its own; start at most " +
                                std::to_string(c.second) + " ranks per host");
  std::map<std::string, std::vector<const GpuRankInfo*>> by_uuid;
  for (const GpuRankInfo& g : table) by_uuid[g.uuid].push_back(&g);
  for (const GpuRankInfo& g : table) {
    const auto& users = by_uuid[g.uuid];
    if (users.size() < 2) continue;
    std::ostringstream os;
    os << "ranks";
    for (size_t i = 0; i < users.size(); ++i)
      os << (i ? ", " : " ") << users[i]->rank << " (" << users[i]->host << " device "
         << users[i]->device << ")";
    os << " share one GPU; every rank needs its own GPU: check CUDA_VISIBLE_DEVICES and the "
          "number of ranks per host";
    throw InvalidArgument("GPU", g.uuid.substr(0, 12), os.str());
  }
}

std::string format_gpu_table(const std::vector<GpuRankInfo>& table) {
  size_t host_w = 4, name_w = 4;
  for (const GpuRankInfo& g : table) {
    host_w = std::max(host_w, g.host.size());
    name_w = std::max(name_w, g.name.size());
  }
  std::ostringstream os;
  os << std::left << "  " << std::setw(5) << "rank" << "  " << std::setw(static_cast<int>(host_w))
     << "host" << "  " << std::setw(5) << "local" << "  " << std::setw(6) << "device" << "  "
     << std::setw(static_cast<int>(name_w)) << "name" << "  " << std::setw(12) << "uuid"
     << "  memory\n";
  for (const GpuRankInfo& g : table)
    os << "  " << std::setw(5) << g.rank << "  " << std::setw(static_cast<int>(host_w)) << g.host
       << "  " << std::setw(5) << g.local_rank << "  " << std::setw(6) << g.device << "  "
       << std::setw(static_cast<int>(name_w)) << g.name << "  " << std::setw(12)
       << g.uuid.substr(0, 12) << "  " << human_bytes(static_cast<double>(g.total_bytes)) << "\n";
  return os.str();
}

// ---- the communicator ------------------------------------------------------------------------

// One start_exchange in flight: its completion event on the comm stream and what it moves.
class NcclPendingExchange final : public PendingComm {
 public:
  NcclPendingExchange(NcclCommunicator& comm, CommOp op, std::string name, std::string peers,
                      CUevent_st* done)
      : comm_(comm), op_(op), name_(std::move(name)), peers_(std::move(peers)), done_(done) {}
  // Abandoned (an exception unwinds past it): the transfer may still run; its event is
  // released without waiting.
  ~NcclPendingExchange() override {
    if (done_) cudaEventDestroy(done_);
  }
  void wait() override {
    CUevent_st* d = done_;
    done_ = nullptr;
    try {
      comm_.wait_done(d, op_, name_, peers_);
    } catch (...) {
      cudaEventDestroy(d);
      throw;
    }
    comm_.recycle(d);
  }

 private:
  NcclCommunicator& comm_;
  CommOp op_;
  std::string name_, peers_;
  CUevent_st* done_;
};

NcclCommunicator::NcclCommunicator(MPI_Comm comm, CudaBackend& backend, CommOptions options,
                                   bool print_table)
    : mpi_(comm, options), options_(options) {
  rank_ = mpi_.rank();
  world_ = mpi_.world();
  device_ = backend.device_index();
  work_stream_ = static_cast<CUstream_st*>(backend.stream());
  table_ = gather_gpu_table(mpi_, device_);
  check_gpu_table(table_);  // the same table on every rank: all pass or all throw
  if (print_table && rank_ == 0)
    std::cerr << "longattn: NCCL " << nccl_version() << ", " << world_
              << " rank(s), one GPU each\n"
              << format_gpu_table(table_) << std::flush;
  // NVLink multicast (NVLS) stays off unless the user chose otherwise: it needs fabric
  // features shared hosts do not grant, and ring attention has no use for it.
  if (const char* nvls = std::getenv("NCCL_NVLS_ENABLE")) {
    if (std::strcmp(nvls, "0") != 0)
      log(LogLevel::Warn, "NCCL_NVLS_ENABLE=", nvls, " is set; longattn expects 0");
  } else {
    setenv("NCCL_NVLS_ENABLE", "0", 0);
  }
  try {
    // One rank, one GPU: the thread's current device is the backend's from here on, so no
    // runtime call creates a context on another GPU.
    CUDA_CHECK(cudaSetDevice(device_));
    int least = 0, greatest = 0;
    CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    // High priority: the transfer's few blocks are scheduled ahead of queued attention blocks.
    cudaStream_t s = nullptr;
    CUDA_CHECK(cudaStreamCreateWithPriority(&s, cudaStreamNonBlocking, greatest));
    comm_stream_ = s;
    cudaEvent_t ev = nullptr;
    CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    ready_ = ev;

    struct IdMessage {
      int32_t ok = 0;
      char error[256] = {};
      ncclUniqueId id{};
    } msg;
    if (rank_ == 0) {
      const ncclResult_t r = ncclGetUniqueId(&msg.id);
      msg.ok = r == ncclSuccess;
      if (!msg.ok) copy_text(msg.error, sizeof(msg.error), nccl::describe_nccl_result(r, nullptr));
    }
    mpi_.broadcast_host(&msg, sizeof(msg), 0, CommOp{"ncclUniqueId from rank 0", -1});
    if (!msg.ok)
      throw CommError(host_name() + " rank " + std::to_string(rank_) +
                      ": rank 0 could not create the NCCL unique id: " + msg.error + "; " +
                      nccl::kDiagnosticsHint);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;  // every NCCL call returns at once; waits poll with the timeout
    ncclComm_t c = nullptr;
    const ncclResult_t r = ncclCommInitRankConfig(&c, world_, msg.id, rank_, &config);
    nccl_ = c;
    if (r != ncclSuccess && r != ncclInProgress) {
      abort_nccl();
      nccl::throw_nccl_error(r, nullptr, "ncclCommInitRankConfig", __FILE__, __LINE__);
    }
    wait_enqueued(CommOp{"NCCL communicator creation", -1}, "NCCL communicator creation",
                  "every rank to join");
  } catch (...) {
    abort_nccl();
    if (ready_) cudaEventDestroy(ready_);
    if (comm_stream_) cudaStreamDestroy(comm_stream_);
    throw;
  }
  // Every rank created its communicator before any rank posts work on it.
  mpi_.barrier(CommOp{"NCCL communicator ready", -1});
}

NcclCommunicator::~NcclCommunicator() {
  int prev = 0;
  const bool have_prev = cudaGetDevice(&prev) == cudaSuccess;
  cudaSetDevice(device_);
  if (nccl_ && !broken_) {
    // Flush outstanding work and leave cleanly; a peer that never does bounds this by the
    // timeout, and then the communicator is aborted instead.
    bool clean = false;
    const ncclResult_t f = ncclCommFinalize(nccl_);
    if (f == ncclSuccess || f == ncclInProgress) {
      PollPacer pacer;
      const double limit = std::min(options_.timeout_seconds, 60.0);
      for (;;) {
        ncclResult_t st = ncclInProgress;
        if (ncclCommGetAsyncError(nccl_, &st) != ncclSuccess) break;
        if (st == ncclSuccess) {
          clean = true;
          break;
        }
        if (st != ncclInProgress || pacer.elapsed() > limit) break;
        pacer.pause();
      }
    }
    if (clean)
      ncclCommDestroy(nccl_);
    else
      ncclCommAbort(nccl_);
    nccl_ = nullptr;
  }
  abort_nccl();
  for (CUevent_st* e : free_events_) cudaEventDestroy(e);
  if (ready_) cudaEventDestroy(ready_);
  if (comm_stream_) cudaStreamDestroy(comm_stream_);
  if (have_prev) cudaSetDevice(prev);
}

std::string NcclCommunicator::nccl_version() {
  int v = 0;
  if (ncclGetVersion(&v) != ncclSuccess) return "unknown";
  // NCCL_VERSION: X*1000+Y*100+Z before 2.9, X*10000+Y*100+Z since.
  const int major = v >= 10000 ? v / 10000 : v / 1000;
  const int minor = v >= 10000 ? (v / 100) % 100 : (v / 100) % 10;
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(v % 100);
}

void NcclCommunicator::set_timeout_seconds(double seconds) {
  mpi_.set_timeout_seconds(seconds);  // validates
  options_.timeout_seconds = seconds;
}

void NcclCommunicator::check_usable(const CommOp& op) const {
  if (broken_ || !nccl_)
    throw CommError(host_name() + " rank " + std::to_string(rank_) + ": " +
                    where(op.name ? op.name : "comm", op.step) +
                    ": the NCCL communicator was aborted after an earlier failure and cannot be "
                    "used again");
}

void NcclCommunicator::abort_nccl() noexcept {
  if (!nccl_) return;
  broken_ = true;
  ncclCommAbort(nccl_);
  nccl_ = nullptr;
}

void NcclCommunicator::fail(const std::string& what, const CommOp& op, const std::string& name,
                            const std::string& peers, bool timed_out, double waited) {
  std::ostringstream os;
  os << host_name() << " rank " << rank_ << " (GPU " << device_ << "): ";
  if (timed_out)
    os << "timed out after " << std::setprecision(3) << waited << " s in ";
  else
    os << what << " in ";
  os << where(name, op.step) << " waiting for " << peers;
  if (timed_out)
    os << ". A peer died, hangs or runs a different configuration; if it is only slow, raise "
          "LONGATTN_COMM_TIMEOUT (seconds, now "
       << options_.timeout_seconds << ")";
  os << ". The NCCL communicator was aborted; " << nccl::kDiagnosticsHint << ".";
  // Said before the abort, which may itself take a while when a peer is gone.
  log(LogLevel::Error, where(name, op.step), ": ", timed_out ? "timed out" : what,
      "; aborting the NCCL communicator");
  abort_nccl();
  throw CommError(os.str());
}

void NcclCommunicator::wait_enqueued(const CommOp& op, const std::string& name,
                                     const std::string& peers) {
  PollPacer pacer;
  for (;;) {
    ncclResult_t st = ncclInProgress;
    const ncclResult_t q = ncclCommGetAsyncError(nccl_, &st);
    if (q != ncclSuccess)
      fail("ncclCommGetAsyncError failed: " + nccl::describe_nccl_result(q, nccl_), op, name,
           peers, false, pacer.elapsed());
    if (st == ncclSuccess) return;
    if (st != ncclInProgress)
      fail("NCCL reported " + nccl::describe_nccl_result(st, nccl_), op, name, peers, false,
           pacer.elapsed());
    if (pacer.elapsed() > options_.timeout_seconds)
      fail("", op, name, peers, true, pacer.elapsed());
    pacer.pause();
  }
}

void NcclCommunicator::wait_done(CUevent_st* done, const CommOp& op, const std::string& name,
                                 const std::string& peers) {
  check_usable(op);
  PollPacer pacer;
  for (;;) {
    const cudaError_t e = cudaEventQuery(done);
    if (e == cudaSuccess) break;
    if (e != cudaErrorNotReady) {
      cudaGetLastError();
      fail("CUDA reported " + cuda::describe_cuda_error(e), op, name, peers, false,
           pacer.elapsed());
    }
    ncclResult_t st = ncclSuccess;
    if (ncclCommGetAsyncError(nccl_, &st) == ncclSuccess && st != ncclSuccess &&
        st != ncclInProgress)
      fail("NCCL reported " + nccl::describe_nccl_result(st, nccl_), op, name, peers, false,
           pacer.elapsed());
    if (pacer.elapsed() > options_.timeout_seconds)
      fail("", op, name, peers, true, pacer.elapsed());
    pacer.pause();
  }
  // The data is there: work queued from now on may read it (no host wait for the work stream).
  CUDA_CHECK(cudaStreamWaitEvent(work_stream_, done, 0));
}

void NcclCommunicator::order_after_work() {
  CUDA_CHECK(cudaEventRecord(ready_, work_stream_));
  CUDA_CHECK(cudaStreamWaitEvent(comm_stream_, ready_, 0));
}

CUevent_st* NcclCommunicator::record_done() {
  cudaEvent_t ev = nullptr;
  if (!free_events_.empty()) {
    ev = free_events_.back();
    free_events_.pop_back();
  } else {
    CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  }
  const cudaError_t e = cudaEventRecord(ev, comm_stream_);
  if (e != cudaSuccess) {
    cudaEventDestroy(ev);
    cuda::throw_cuda_error(e, "cudaEventRecord(ev, comm_stream_)", __FILE__, __LINE__);
  }
  return ev;
}

void NcclCommunicator::recycle(CUevent_st* ev) { free_events_.push_back(ev); }

CommRequest NcclCommunicator::start_exchange(const std::vector<SendSpec>& sends,
                                             const std::vector<RecvSpec>& recvs, CommOp op) {
  check_usable(op);
  const std::string name = op.name ? op.name : "exchange";
  std::ostringstream peers;
  int64_t n_send = 0, n_recv = 0, b_send = 0, b_recv = 0;
  auto check_peer = [&](int peer) {
    LONGATTN_CHECK_ARG(peer >= 0 && peer < world_, "peer", peer,
                       "must be a rank in [0, " + std::to_string(world_) + ")");
  };
  for (const RecvSpec& r : recvs) {
    if (r.bytes == 0) continue;
    check_peer(r.peer);
    LONGATTN_CHECK_ARG(r.buf != nullptr, "receive buffer", "null", "must be device memory");
    peers << (n_send + n_recv ? "; " : "") << "receive of " << r.bytes << " bytes from rank "
          << r.peer;
    ++n_recv;
    b_recv += static_cast<int64_t>(r.bytes);
  }
  for (const SendSpec& s : sends) {
    if (s.bytes == 0) continue;
    check_peer(s.peer);
    LONGATTN_CHECK_ARG(s.buf != nullptr, "send buffer", "null", "must be device memory");
    peers << (n_send + n_recv ? "; " : "") << "send of " << s.bytes << " bytes to rank "
          << s.peer;
    ++n_send;
    b_send += static_cast<int64_t>(s.bytes);
  }
  if (n_send + n_recv == 0) return CommRequest();
  const std::string peer_text = "NCCL " + peers.str();

  DeviceScope scope(device_);
  order_after_work();
  NCCL_CHECK(ncclGroupStart());
  ncclResult_t failed = ncclSuccess;
  const char* failed_call = "";
  for (const RecvSpec& r : recvs) {
    if (r.bytes == 0 || failed != ncclSuccess) continue;
    const ncclResult_t x = ncclRecv(r.buf, r.bytes, ncclUint8, r.peer, nccl_, comm_stream_);
    if (x != ncclSuccess && x != ncclInProgress) failed = x, failed_call = "ncclRecv";
  }
  for (const SendSpec& s : sends) {
    if (s.bytes == 0 || failed != ncclSuccess) continue;
    const ncclResult_t x = ncclSend(s.buf, s.bytes, ncclUint8, s.peer, nccl_, comm_stream_);
    if (x != ncclSuccess && x != ncclInProgress) failed = x, failed_call = "ncclSend";
  }
  const ncclResult_t end = ncclGroupEnd();  // always closes the group, even after a failure
  if (failed == ncclSuccess && end != ncclSuccess && end != ncclInProgress)
    failed = end, failed_call = "ncclGroupEnd";
  if (failed != ncclSuccess)
    fail(std::string(failed_call) + " failed: " + nccl::describe_nccl_result(failed, nccl_), op,
         name, peer_text, false, 0.0);
  wait_enqueued(op, name, peer_text);
  CUevent_st* done = record_done();
  ++stats_.exchanges;
  stats_.sends += n_send;
  stats_.recvs += n_recv;
  stats_.bytes_sent += b_send;
  stats_.bytes_received += b_recv;
  return CommRequest(
      std::make_unique<NcclPendingExchange>(*this, op, name, peer_text, done));
}

void NcclCommunicator::allreduce(void* buf, size_t count, DType dtype, ReduceOp reduce,
                                 CommOp op) {
  check_usable(op);
  LONGATTN_CHECK_ARG(dtype == DType::F64 || dtype == DType::F32, "allreduce dtype",
                     dtype_name(dtype), "must be fp64 or fp32");
  if (count == 0) return;
  const std::string name = op.name ? op.name : "all-reduce";
  const std::string peers = "NCCL all-reduce of " + std::to_string(count) + " " +
                            dtype_name(dtype) + " values over " + std::to_string(world_) +
                            " ranks";
  DeviceScope scope(device_);
  order_after_work();
  const ncclResult_t r =
      ncclAllReduce(buf, buf, count, nccl_float_type(dtype), nccl_op(reduce), nccl_, comm_stream_);
  if (r != ncclSuccess && r != ncclInProgress)
    fail("ncclAllReduce failed: " + nccl::describe_nccl_result(r, nccl_), op, name, peers, false,
         0.0);
  wait_enqueued(op, name, peers);
  CUevent_st* done = record_done();
  ++stats_.collectives;
  NcclPendingExchange(*this, op, name, peers, done).wait();
}

void NcclCommunicator::broadcast(void* buf, size_t bytes, int root, CommOp op) {
  check_usable(op);
  LONGATTN_CHECK_ARG(root >= 0 && root < world_, "broadcast root", root,
                     "must be a rank in [0, " + std::to_string(world_) + ")");
  if (bytes == 0) return;
  const std::string name = op.name ? op.name : "broadcast";
  const std::string peers = "NCCL broadcast of " + std::to_string(bytes) + " bytes from rank " +
                            std::to_string(root);
  DeviceScope scope(device_);
  order_after_work();
  const ncclResult_t r = ncclBroadcast(buf, buf, bytes, ncclUint8, root, nccl_, comm_stream_);
  if (r != ncclSuccess && r != ncclInProgress)
    fail("ncclBroadcast failed: " + nccl::describe_nccl_result(r, nccl_), op, name, peers, false,
         0.0);
  wait_enqueued(op, name, peers);
  CUevent_st* done = record_done();
  ++stats_.collectives;
  NcclPendingExchange(*this, op, name, peers, done).wait();
}

void NcclCommunicator::barrier(CommOp op) {
  check_usable(op);
  mpi_.barrier(op);
}

void NcclCommunicator::allgather_host(const void* send, size_t bytes, void* recv, CommOp op) {
  mpi_.allgather_host(send, bytes, recv, op);
}

void NcclCommunicator::broadcast_host(void* buf, size_t bytes, int root, CommOp op) {
  mpi_.broadcast_host(buf, bytes, root, op);
}

void NcclCommunicator::allreduce_host(double* values, size_t count, ReduceOp reduce, CommOp op) {
  mpi_.allreduce_host(values, count, reduce, op);
}

GpuRank make_gpu_rank(CommOptions options, bool print_table) {
  const int device = select_local_device(MPI_COMM_WORLD, options);
  CUDA_CHECK(cudaSetDevice(device));
  GpuRank g;
  g.backend = make_cuda_backend(device);
  g.comm = std::make_unique<NcclCommunicator>(MPI_COMM_WORLD, as_cuda(*g.backend), options,
                                              print_table);
  return g;
}

}  // namespace longattn
