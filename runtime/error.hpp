// Errors of longattn and the checking macros' common reporter.
// Library code throws; only main() turns an error into an exit code (2 for invalid arguments).
#pragma once
#include <cstddef>
#include <sstream>
#include <stdexcept>
#include <string>

namespace longattn {

// Base of every error the library throws.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// An argument broke a rule: the message names the argument, its value and the rule.
class InvalidArgument : public Error {
 public:
  InvalidArgument(const std::string& arg, const std::string& value, const std::string& rule)
      : Error("invalid argument " + arg + " = " + value + ": " + rule), arg_(arg) {}
  const std::string& argument() const { return arg_; }

 private:
  std::string arg_;
};

// A communication peer did not answer in time or died.
class CommError : public Error {
 public:
  using Error::Error;
};

// Device or host memory could not be obtained; the message says how much was needed, and
// requested_bytes() gives it as a number when the thrower knew it (0 otherwise).
class OutOfMemory : public Error {
 public:
  explicit OutOfMemory(const std::string& what, size_t requested_bytes = 0)
      : Error(what), requested_bytes_(requested_bytes) {}
  size_t requested_bytes() const { return requested_bytes_; }

 private:
  size_t requested_bytes_ = 0;
};

template <typename T>
std::string to_string_any(const T& v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

// Formats "host rank R: file:line: `call` failed: what" for API-family checks (CUDA, NCCL, MPI).
std::string format_api_failure(const char* family, const char* call, const char* file, int line,
                               const std::string& what);

}  // namespace longattn

// Argument check: throws InvalidArgument naming the argument, its value and the rule.
#define LONGATTN_CHECK_ARG(cond, arg, value, rule)                                        \
  do {                                                                                     \
    if (!(cond)) throw ::longattn::InvalidArgument((arg), ::longattn::to_string_any(value), \
                                                   (rule));                                \
  } while (0)

// Internal invariant: a failure is a bug in longattn, reported with file and line.
#define LONGATTN_ASSERT(cond, msg)                                                          \
  do {                                                                                      \
    if (!(cond))                                                                            \
      throw ::longattn::Error(::longattn::format_api_failure("internal", #cond, __FILE__,  \
                                                             __LINE__, (msg)));             \
  } while (0)
