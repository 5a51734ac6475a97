// Communicator options shared by every backend: the wait timeout and its environment override.
#include "comm/communicator.hpp"

#include <cmath>
#include <cstdlib>
#include <string>

#include "runtime/error.hpp"

namespace longattn {

double comm_timeout_from_env() {
  const char* e = std::getenv("LONGATTN_COMM_TIMEOUT");
  if (!e || !*e) return CommOptions::kDefaultTimeoutSeconds;
  char* end = nullptr;
  const double v = std::strtod(e, &end);
  LONGATTN_CHECK_ARG(end && *end == '\0' && std::isfinite(v) && v > 0.0, "LONGATTN_COMM_TIMEOUT",
                     std::string(e), "must be a positive number of seconds");
  return v;
}

CommOptions comm_options_from_env() {
  CommOptions o;
  o.timeout_seconds = comm_timeout_from_env();
  return o;
}

}  // namespace longattn
