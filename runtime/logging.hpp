// Logging with a rank prefix ("[longattn r0/4] ..."), to stderr, filtered by level.
// The rank is set once by the bootstrap; LONGATTN_LOG_LEVEL=debug|info|warn|error overrides.
#pragma once
#include <sstream>
#include <string>

namespace longattn {

enum class LogLevel { Debug = 0, Info = 1, Warn = 2, Error = 3 };

void set_log_rank(int rank, int world);
void set_log_level(LogLevel level);
LogLevel log_level();
std::string host_name();
int log_rank();
void log_message(LogLevel level, const std::string& msg);

template <typename... Args>
void log(LogLevel level, const Args&... args) {
  if (level < log_level()) return;
  std::ostringstream os;
  (os << ... << args);
  log_message(level, os.str());
}

}  // namespace longattn
