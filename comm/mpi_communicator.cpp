// MPI backend: non-blocking point-to-point and collectives on a duplicated communicator, each
// completed by a polling wait with a timeout (MPI's blocking calls cannot time out), and the
// MPI bootstrap.
#include "comm/mpi_communicator.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <sstream>
#include <thread>

#include "runtime/error.hpp"
#include "runtime/logging.hpp"

namespace longattn {

void mpi_check_failed(int code, const char* call, const char* file, int line) {
  char msg[MPI_MAX_ERROR_STRING] = {0};
  int len = 0;
  if (MPI_Error_string(code, msg, &len) != MPI_SUCCESS)
    std::snprintf(msg, sizeof(msg), "code %d", code);
  throw CommError(format_api_failure("MPI", call, file, line, msg));
}

namespace {

// Tag of every point-to-point message: longattn owns its duplicated communicator, so one tag
// suffices and messages between two ranks match in the order they were posted.
constexpr int kExchangeTag = 0x1a77;
// MPI counts are int: longer messages go out as several messages of at most this size.
constexpr size_t kMaxMessageBytes = size_t{1} << 30;

using Clock = std::chrono::steady_clock;

// Polls without monopolising a core that an oversubscribed peer rank may need: yield first,
// then sleep, longer the longer the wait has been.
class Backoff {
 public:
  void pause() {
    ++polls_;
    if (polls_ < kYieldPolls) {
      std::this_thread::yield();
      return;
    }
    const auto waited = Clock::now() - start_;
    std::this_thread::sleep_for(waited > std::chrono::seconds(1) ? std::chrono::microseconds(1000)
                                                                 : std::chrono::microseconds(50));
  }
  double elapsed() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

 private:
  static constexpr int kYieldPolls = 200;
  int polls_ = 0;
  Clock::time_point start_ = Clock::now();
};

std::string where(const std::string& name, int step) {
  std::ostringstream os;
  os << name;
  if (step >= 0) os << " (ring step " << step << ")";
  return os.str();
}

MPI_Op mpi_op(ReduceOp r) {
  switch (r) {
    case ReduceOp::Sum:
      return MPI_SUM;
    case ReduceOp::Max:
      return MPI_MAX;
    case ReduceOp::Min:
      return MPI_MIN;
  }
  return MPI_SUM;
}

}  // namespace

// Point-to-point messages of one start_exchange call; entries[i] describes reqs[i].
class MpiPendingExchange final : public PendingComm {
 public:
  struct Entry {
    bool is_recv = false;
    int peer = 0;
    size_t bytes = 0;  // of the whole SendSpec / RecvSpec this message belongs to
  };
  MpiPendingExchange(MpiCommunicator& comm, CommOp op)
      : comm_(comm), name_(op.name ? op.name : "exchange"), step_(op.step) {}
  ~MpiPendingExchange() override { abandon(); }

  void add(MPI_Request r, Entry e) {
    reqs_.push_back(r);
    entries_.push_back(e);
  }

  void wait() override {
    Backoff backoff;
    std::vector<int> done(reqs_.size());
    int remaining = static_cast<int>(std::count_if(
        reqs_.begin(), reqs_.end(), [](MPI_Request r) { return r != MPI_REQUEST_NULL; }));
    while (remaining > 0) {
      int outcount = 0;
      LONGATTN_MPI_CHECK(MPI_Testsome(static_cast<int>(reqs_.size()), reqs_.data(), &outcount,
                                      done.data(), MPI_STATUSES_IGNORE));
      if (outcount == MPI_UNDEFINED) break;
      remaining -= outcount;
      if (remaining == 0) break;
      if (outcount == 0) {
        if (backoff.elapsed() > comm_.timeout_seconds()) timed_out(backoff.elapsed());
        backoff.pause();
      }
    }
    reqs_.clear();
    entries_.clear();
  }

 private:
  [[noreturn]] void timed_out(double waited) {
    std::set<int> peers;
    std::ostringstream pending;
    std::set<std::pair<int, int>> listed;  // (is_recv, peer): one line per spec, not per chunk
    for (size_t i = 0; i < reqs_.size(); ++i) {
      if (reqs_[i] == MPI_REQUEST_NULL) continue;
      const Entry& e = entries_[i];
      peers.insert(e.peer);
      if (!listed.insert({e.is_recv ? 1 : 0, e.peer}).second) continue;
      pending << (listed.size() > 1 ? "; " : "") << (e.is_recv ? "receive of " : "send of ")
              << e.bytes << " bytes " << (e.is_recv ? "from" : "to") << " rank " << e.peer;
    }
    abandon();
    comm_.broken_ = true;
    std::ostringstream os;
    os << host_name() << " rank " << comm_.rank() << ": timed out after " << waited << " s in "
       << where(name_, step_) << " waiting for rank";
    if (peers.size() > 1) os << "s";
    bool first = true;
    for (int p : peers) {
      os << (first ? " " : ", ") << p;
      first = false;
    }
    os << " (still outstanding: " << pending.str()
       << "). The peer died or is stuck; if it is only slow, raise LONGATTN_COMM_TIMEOUT "
          "(seconds, now "
       << comm_.timeout_seconds() << ").";
    throw CommError(os.str());
  }

  // Gives up on what is outstanding without blocking: receives are cancelled, every request
  // handle is released (MPI finishes or drops the transfer on its own).
  void abandon() noexcept {
    for (size_t i = 0; i < reqs_.size(); ++i) {
      if (reqs_[i] == MPI_REQUEST_NULL) continue;
      if (entries_[i].is_recv) MPI_Cancel(&reqs_[i]);
      MPI_Request_free(&reqs_[i]);
    }
    reqs_.clear();
    entries_.clear();
  }

  MpiCommunicator& comm_;
  std::string name_;
  int step_;
  std::vector<MPI_Request> reqs_;
  std::vector<Entry> entries_;
};

MpiCommunicator::MpiCommunicator(MPI_Comm comm, CommOptions options) : options_(options) {
  LONGATTN_CHECK_ARG(options.timeout_seconds > 0.0, "comm timeout", options.timeout_seconds,
                     "must be a positive number of seconds");
  LONGATTN_MPI_CHECK(MPI_Comm_dup(comm, &comm_));
  LONGATTN_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  LONGATTN_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  LONGATTN_MPI_CHECK(MPI_Comm_size(comm_, &world_));
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  // After a timeout, abandoned messages may still target the duplicate: leave it to MPI_Abort
  // or MPI_Finalize rather than free it under them.
  if (!finalized && !broken_ && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

void MpiCommunicator::set_timeout_seconds(double seconds) {
  LONGATTN_CHECK_ARG(seconds > 0.0 && std::isfinite(seconds), "comm timeout", seconds,
                     "must be a positive number of seconds");
  options_.timeout_seconds = seconds;
}

void MpiCommunicator::check_usable(CommOp op) const {
  if (broken_)
    throw CommError("rank " + std::to_string(rank_) + ": " +
                    where(op.name ? op.name : "comm", op.step) +
                    ": the communicator is unusable after an earlier timeout");
}

CommRequest MpiCommunicator::start_exchange(const std::vector<SendSpec>& sends,
                                            const std::vector<RecvSpec>& recvs, CommOp op) {
  check_usable(op);
  auto pending = std::make_unique<MpiPendingExchange>(*this, op);
  auto check_peer = [&](int peer) {
    LONGATTN_CHECK_ARG(peer >= 0 && peer < world_, "peer", peer,
                       "must be a rank in [0, " + std::to_string(world_) + ")");
  };
  // Receives first, so that a message from a fast peer finds its buffer already posted.
  for (const RecvSpec& r : recvs) {
    if (r.bytes == 0) continue;
    check_peer(r.peer);
    for (size_t off = 0; off < r.bytes; off += kMaxMessageBytes) {
      const int n = static_cast<int>(std::min(kMaxMessageBytes, r.bytes - off));
      MPI_Request req;
      LONGATTN_MPI_CHECK(MPI_Irecv(static_cast<std::byte*>(r.buf) + off, n, MPI_BYTE, r.peer,
                                   kExchangeTag, comm_, &req));
      pending->add(req, {true, r.peer, r.bytes});
    }
  }
  for (const SendSpec& s : sends) {
    if (s.bytes == 0) continue;
    check_peer(s.peer);
    for (size_t off = 0; off < s.bytes; off += kMaxMessageBytes) {
      const int n = static_cast<int>(std::min(kMaxMessageBytes, s.bytes - off));
      MPI_Request req;
      LONGATTN_MPI_CHECK(MPI_Isend(static_cast<const std::byte*>(s.buf) + off, n, MPI_BYTE, s.peer,
                                   kExchangeTag, comm_, &req));
      pending->add(req, {false, s.peer, s.bytes});
    }
  }
  return CommRequest(std::move(pending));
}

void MpiCommunicator::wait_collective(MPI_Request& req, CommOp op, const char* what) {
  Backoff backoff;
  for (;;) {
    int flag = 0;
    LONGATTN_MPI_CHECK(MPI_Test(&req, &flag, MPI_STATUS_IGNORE));
    if (flag) return;
    if (backoff.elapsed() > options_.timeout_seconds) {
      broken_ = true;  // a collective cannot be cancelled; the request is left to MPI_Abort
      std::ostringstream os;
      os << host_name() << " rank " << rank_ << ": timed out after " << backoff.elapsed()
         << " s in " << where(op.name ? op.name : what, op.step) << " (" << what << " over "
         << world_
         << " ranks): some rank never joined it, died, or runs a different configuration; if "
            "it is only slow, raise LONGATTN_COMM_TIMEOUT (seconds, now "
         << options_.timeout_seconds << ").";
      throw CommError(os.str());
    }
    backoff.pause();
  }
}

void MpiCommunicator::allreduce(void* buf, size_t count, DType dtype, ReduceOp reduce, CommOp op) {
  check_usable(op);
  LONGATTN_CHECK_ARG(dtype == DType::F64 || dtype == DType::F32, "allreduce dtype",
                     dtype_name(dtype), "must be fp64 or fp32");
  const MPI_Datatype type = dtype == DType::F64 ? MPI_DOUBLE : MPI_FLOAT;
  const size_t elem = dtype_size(dtype), max_count = kMaxMessageBytes / elem;
  for (size_t off = 0; off < count; off += max_count) {
    const int n = static_cast<int>(std::min(max_count, count - off));
    MPI_Request req;
    LONGATTN_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, static_cast<std::byte*>(buf) + off * elem, n,
                                      type, mpi_op(reduce), comm_, &req));
    wait_collective(req, op, "all-reduce");
  }
}

void MpiCommunicator::broadcast(void* buf, size_t bytes, int root, CommOp op) {
  check_usable(op);
  LONGATTN_CHECK_ARG(root >= 0 && root < world_, "broadcast root", root,
                     "must be a rank in [0, " + std::to_string(world_) + ")");
  for (size_t off = 0; off < bytes; off += kMaxMessageBytes) {
    const int n = static_cast<int>(std::min(kMaxMessageBytes, bytes - off));
    MPI_Request req;
    LONGATTN_MPI_CHECK(
        MPI_Ibcast(static_cast<std::byte*>(buf) + off, n, MPI_BYTE, root, comm_, &req));
    wait_collective(req, op, "broadcast");
  }
}

void MpiCommunicator::barrier(CommOp op) {
  check_usable(op);
  MPI_Request req;
  LONGATTN_MPI_CHECK(MPI_Ibarrier(comm_, &req));
  wait_collective(req, op, "barrier");
}

void MpiCommunicator::allgather_host(const void* send, size_t bytes, void* recv, CommOp op) {
  check_usable(op);
  LONGATTN_CHECK_ARG(bytes <= kMaxMessageBytes, "allgather_host bytes", bytes,
                     "must be at most " + std::to_string(kMaxMessageBytes) + " (control plane)");
  MPI_Request req;
  LONGATTN_MPI_CHECK(MPI_Iallgather(send, static_cast<int>(bytes), MPI_BYTE, recv,
                                    static_cast<int>(bytes), MPI_BYTE, comm_, &req));
  wait_collective(req, op, "all-gather");
}

void MpiCommunicator::broadcast_host(void* buf, size_t bytes, int root, CommOp op) {
  broadcast(buf, bytes, root, op);
}

void MpiCommunicator::allreduce_host(double* values, size_t count, ReduceOp reduce, CommOp op) {
  allreduce(values, count, DType::F64, reduce, op);
}

std::unique_ptr<Communicator> make_mpi_communicator(CommOptions options) {
  return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, options);
}

RankInfo mpi_rank_info(MPI_Comm comm) {
  RankInfo info;
  LONGATTN_MPI_CHECK(MPI_Comm_rank(comm, &info.rank));
  LONGATTN_MPI_CHECK(MPI_Comm_size(comm, &info.world));
  MPI_Comm local = MPI_COMM_NULL;
  LONGATTN_MPI_CHECK(
      MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, info.rank, MPI_INFO_NULL, &local));
  LONGATTN_MPI_CHECK(MPI_Comm_rank(local, &info.local_rank));
  LONGATTN_MPI_CHECK(MPI_Comm_size(local, &info.local_world));
  LONGATTN_MPI_CHECK(MPI_Comm_free(&local));
  info.host = host_name();
  set_log_rank(info.rank, info.world);
  return info;
}

MpiSession::MpiSession(int* argc, char*** argv) {
  int initialized = 0;
  LONGATTN_MPI_CHECK(MPI_Initialized(&initialized));
  if (!initialized) {
    int provided = 0;
    LONGATTN_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
    owns_ = true;
  }
  info_ = mpi_rank_info(MPI_COMM_WORLD);
}

MpiSession::~MpiSession() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (owns_ && !finalized) MPI_Finalize();
}

void mpi_abort(int exit_code) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::_Exit(exit_code);
}

}  // namespace longattn
