// Agreement across ranks: configuration (hash, all-gather of the hashes) and the outcome of each
// rank's local preparation; the same verdict everywhere.
#include "runtime/bootstrap.hpp"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <new>
#include <sstream>
#include <vector>

#include "comm/communicator.hpp"
#include "runtime/error.hpp"

namespace longattn {

uint64_t config_hash(std::string_view canonical) {
  constexpr uint64_t kOffsetBasis = 0xcbf29ce484222325ull;
  constexpr uint64_t kPrime = 0x100000001b3ull;
  uint64_t h = kOffsetBasis;
  for (const char c : canonical) {
    h ^= static_cast<uint8_t>(c);
    h *= kPrime;
  }
  return h;
}

namespace {
std::string hex(uint64_t v) {
  char buf[19];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}
}  // namespace

void agree_on_config(Communicator& comm, std::string_view canonical, const std::string& what) {
  const uint64_t mine = config_hash(canonical);
  std::vector<uint64_t> all(static_cast<size_t>(comm.world()));
  comm.allgather_host(&mine, sizeof(mine), all.data(), CommOp{"config hash agreement", -1});
  std::vector<int> differing;
  for (int r = 1; r < comm.world(); ++r)
    if (all[r] != all[0]) differing.push_back(r);
  if (differing.empty()) return;
  std::ostringstream os;
  os << what << ": the configuration differs across ranks: rank";
  if (differing.size() > 1) os << "s";
  for (size_t i = 0; i < differing.size(); ++i) os << (i ? ", " : " ") << differing[i];
  os << " hash";
  for (int r : differing) os << " " << hex(all[r]);
  os << " vs rank 0 hash " << hex(all[0]) << "; every rank must run the same configuration (rank "
     << comm.rank() << " has: " << canonical << ")";
  throw Error(os.str());
}

namespace {

// One rank's outcome as the others receive it (fixed size for the all-gather).
struct Outcome {
  static constexpr size_t kTextBytes = 400;
  enum Kind : int32_t { kOk = 0, kOutOfMemory = 1, kFailed = 2 };
  int32_t kind = kOk;
  uint64_t requested_bytes = 0;
  char text[kTextBytes] = {};
};

Outcome outcome_of(std::exception_ptr failure) {
  Outcome o;
  if (!failure) return o;
  std::string text;
  try {
    std::rethrow_exception(failure);
  } catch (const OutOfMemory& e) {
    o.kind = Outcome::kOutOfMemory;
    o.requested_bytes = e.requested_bytes();
    text = e.what();
  } catch (const std::bad_alloc&) {
    o.kind = Outcome::kOutOfMemory;
    text = "host memory exhausted (std::bad_alloc)";
  } catch (const std::exception& e) {
    o.kind = Outcome::kFailed;
    text = e.what();
  } catch (...) {
    o.kind = Outcome::kFailed;
    text = "unknown exception";
  }
  std::memcpy(o.text, text.data(), std::min(text.size(), Outcome::kTextBytes - 1));
  return o;
}

}  // namespace

void agree_on_outcome(Communicator& comm, const std::string& op, std::exception_ptr failure) {
  double any_failed = failure ? 1.0 : 0.0;
  std::vector<Outcome> all(static_cast<size_t>(comm.world()));
  try {
    comm.allreduce_host(&any_failed, 1, ReduceOp::Max, CommOp{"outcome agreement", -1});
    if (any_failed == 0.0) return;
    const Outcome mine = outcome_of(failure);
    comm.allgather_host(&mine, sizeof(mine), all.data(), CommOp{"outcome agreement", -1});
  } catch (const Error&) {
    // The agreement itself failed (a peer is gone): this rank's own failure says more.
    if (failure) std::rethrow_exception(failure);
    throw;
  }
  std::vector<int> failed;
  bool all_oom = true;
  size_t requested = 0;
  for (int r = 0; r < comm.world(); ++r) {
    const Outcome& o = all[static_cast<size_t>(r)];
    if (o.kind == Outcome::kOk) continue;
    failed.push_back(r);
    all_oom = all_oom && o.kind == Outcome::kOutOfMemory;
    if (requested == 0) requested = o.requested_bytes;
  }
  std::ostringstream os;
  os << op << " failed on rank" << (failed.size() > 1 ? "s" : "");
  for (size_t i = 0; i < failed.size(); ++i) os << (i ? ", " : " ") << failed[i];
  for (int r : failed) {
    const Outcome& o = all[static_cast<size_t>(r)];
    os << (failed.size() > 1 ? "; rank " + std::to_string(r) + ": " : ": ")
       << (o.kind == Outcome::kOutOfMemory ? "out of memory" : "error");
    if (o.requested_bytes > 0) os << ", " << o.requested_bytes << " bytes requested";
    os << " (" << std::string(o.text, strnlen(o.text, Outcome::kTextBytes)) << ")";
  }
  os << ". Every rank stops here; none is left waiting in an exchange.";
  if (all_oom) throw OutOfMemory(os.str(), requested);
  throw Error(os.str());
}

}  // namespace longattn
