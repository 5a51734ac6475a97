// Rank-prefixed logging and the API-failure formatter shared by the checking macros.
#include "runtime/logging.hpp"

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <iostream>
#include <mutex>

#include "runtime/error.hpp"

namespace longattn {
namespace {
std::atomic<int> g_rank{-1};
std::atomic<int> g_world{0};
std::atomic<int> g_level{-1};
std::mutex g_mutex;

LogLevel level_from_env() {
  const char* e = std::getenv("LONGATTN_LOG_LEVEL");
  if (!e) return LogLevel::Warn;
  std::string s(e);
  if (s == "debug") return LogLevel::Debug;
  if (s == "info") return LogLevel::Info;
  if (s == "error") return LogLevel::Error;
  return LogLevel::Warn;
}
}  // namespace

void set_log_rank(int rank, int world) {
  g_rank = rank;
  g_world = world;
}
int log_rank() { return g_rank; }
void set_log_level(LogLevel level) { g_level = static_cast<int>(level); }
LogLevel log_level() {
  int l = g_level;
  if (l < 0) {
    l = static_cast<int>(level_from_env());
    g_level = l;
  }
  return static_cast<LogLevel>(l);
}

std::string host_name() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "unknown-host";
  return buf;
}

void log_message(LogLevel level, const std::string& msg) {
  static const char* names[] = {"debug", "info", "warn", "error"};
  std::lock_guard<std::mutex> lock(g_mutex);
  std::cerr << "[longattn";
  if (g_rank >= 0) std::cerr << " r" << g_rank << "/" << g_world;
  std::cerr << " " << names[static_cast<int>(level)] << "] " << msg << std::endl;
}

std::string format_api_failure(const char* family, const char* call, const char* file, int line,
                               const std::string& what) {
  std::ostringstream os;
  os << host_name() << " rank " << g_rank << ": " << file << ":" << line << ": " << family
     << " call `" << call << "` failed: " << what;
  return os.str();
}

}  // namespace longattn
