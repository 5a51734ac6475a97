// Configuration agreement across ranks: hash, all-gather of the hashes, the same verdict
// everywhere.
#include "runtime/bootstrap.hpp"

#include <cstdio>
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

}  // namespace longattn
