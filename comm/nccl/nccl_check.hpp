// The NCCL checking macro: a failed NCCL call throws CommError through runtime/error.hpp's one
// reporter (host, rank, file:line, the call as written), with NCCL's error string, its last
// error text and how to get NCCL's own diagnostics. Included by NCCL sources only.
#pragma once
#include <nccl.h>

#include <string>

#include "runtime/error.hpp"

namespace longattn::nccl {

// What every NCCL failure message ends with: NCCL explains itself only when asked.
inline constexpr const char* kDiagnosticsHint =
    "for NCCL's own diagnostics rerun with NCCL_DEBUG=WARN passed to every rank "
    "(mpirun -x NCCL_DEBUG=WARN ...)";

// "ncclUnhandledCudaError: <string>; NCCL says: <last error>" for a result of a call on `comm`
// (nullptr: the thread's last error).
inline std::string describe_nccl_result(ncclResult_t r, ncclComm_t comm) {
  std::string s = ncclGetErrorString(r);
  const char* last = ncclGetLastError(comm);
  if (last && *last) s += std::string("; NCCL says: ") + last;
  return s;
}

[[noreturn]] inline void throw_nccl_error(ncclResult_t r, ncclComm_t comm, const char* call,
                                          const char* file, int line) {
  throw CommError(format_api_failure("NCCL", call, file, line,
                                     describe_nccl_result(r, comm) + "; " + kDiagnosticsHint));
}

}  // namespace longattn::nccl

// Checks an NCCL call. ncclInProgress is not a failure: longattn's communicators are
// nonblocking, and the caller polls ncclCommGetAsyncError until the call has completed.
#define NCCL_CHECK(call)                                                                   \
  do {                                                                                     \
    const ncclResult_t longattn_nccl_rc_ = (call);                                         \
    if (longattn_nccl_rc_ != ncclSuccess && longattn_nccl_rc_ != ncclInProgress)           \
      ::longattn::nccl::throw_nccl_error(longattn_nccl_rc_, nullptr, #call, __FILE__,      \
                                         __LINE__);                                        \
  } while (0)
