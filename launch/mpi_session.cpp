// MPI session of the longattn command (see mpi_session.hpp). MPI calls are checked through
// runtime/error.hpp's common reporter.
#include "launch/mpi_session.hpp"

#include <mpi.h>

#include <cstdlib>
#include <string_view>

#include "runtime/error.hpp"
#include "runtime/logging.hpp"

namespace longattn::cli {

namespace {

void mpi_check(int rc, const char* call, const char* file, int line) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw Error(format_api_failure("MPI", call, file, line, std::string(text, len)));
}

}  // namespace

#define LONGATTN_CLI_MPI_CHECK(call) mpi_check((call), #call, __FILE__, __LINE__)

bool launched_by_mpi() {
  if (const char* force = std::getenv("LONGATTN_MPI")) return std::string_view(force) == "1";
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_RANK"})
    if (std::getenv(var)) return true;
  return false;
}

MpiSession::MpiSession(int* argc, char*** argv) {
  if (!launched_by_mpi()) return;
  int provided = 0;
  LONGATTN_CLI_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
  active_ = true;
  LONGATTN_CLI_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
  LONGATTN_CLI_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_));
  MPI_Comm node;
  LONGATTN_CLI_MPI_CHECK(
      MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node));
  LONGATTN_CLI_MPI_CHECK(MPI_Comm_size(node, &local_world_));
  MPI_Comm_free(&node);
  set_log_rank(rank_, world_);
}

MpiSession::~MpiSession() {
  if (active_) MPI_Finalize();
}

std::vector<std::string> MpiSession::gather(const std::string& mine) const {
  if (!active_) return {mine};
  int len = static_cast<int>(mine.size());
  std::vector<int> lens(rank_ == 0 ? world_ : 0);
  LONGATTN_CLI_MPI_CHECK(MPI_Gather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, 0, MPI_COMM_WORLD));
  std::vector<int> displs(lens.size());
  int total = 0;
  for (size_t r = 0; r < lens.size(); ++r) {
    displs[r] = total;
    total += lens[r];
  }
  std::string all(static_cast<size_t>(total), '\0');
  LONGATTN_CLI_MPI_CHECK(MPI_Gatherv(mine.data(), len, MPI_CHAR, all.data(), lens.data(),
                                     displs.data(), MPI_CHAR, 0, MPI_COMM_WORLD));
  std::vector<std::string> out;
  for (size_t r = 0; r < lens.size(); ++r) out.push_back(all.substr(displs[r], lens[r]));
  return out;
}

int MpiSession::max_all(int value) const {
  if (!active_) return value;
  int out = value;
  LONGATTN_CLI_MPI_CHECK(MPI_Allreduce(&value, &out, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
  return out;
}

void MpiSession::barrier() const {
  if (active_) LONGATTN_CLI_MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
}

void MpiSession::abort(int code) const {
  if (active_) MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);
}

}  // namespace longattn::cli
