// The longattn command's ranks (see process_group.hpp). MPI calls go through comm/'s checking
// macro; the communicator is comm/'s MPI backend.
#include "launch/process_group.hpp"

#include <climits>
#include <cstdlib>
#include <string_view>

#include "comm/mpi_communicator.hpp"
#include "runtime/error.hpp"
#ifdef LONGATTN_HAVE_NCCL
#include "comm/nccl/nccl_communicator.hpp"
#include "kernels/cuda/cuda_backend.hpp"
#endif

namespace longattn::cli {

bool launched_by_mpi() {
  if (const char* force = std::getenv("LONGATTN_MPI")) return std::string_view(force) == "1";
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_RANK"})
    if (std::getenv(var)) return true;
  return false;
}

ProcessGroup::ProcessGroup(int* argc, char*** argv) {
  if (!launched_by_mpi()) return;
  int provided = 0;
  LONGATTN_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
  active_ = true;
  const RankInfo info = mpi_rank_info(MPI_COMM_WORLD);  // also sets the log prefix
  rank_ = info.rank;
  world_ = info.world;
  local_rank_ = info.local_rank;
  local_world_ = info.local_world;
  comm_ = make_mpi_communicator();
}

ProcessGroup::~ProcessGroup() {
  device_comm_.reset();
  comm_.reset();
  if (active_) MPI_Finalize();
}

Communicator& ProcessGroup::comm() const {
  LONGATTN_ASSERT(comm_ != nullptr, "the communicator exists only under a launcher");
  return *comm_;
}

Communicator& ProcessGroup::comm_for(Backend& be) const {
  Communicator& host = comm();
  if (be.device() == host.buffer_device()) return host;
#ifdef LONGATTN_HAVE_NCCL
  if (!device_comm_ || device_comm_backend_ != &be) {
    device_comm_.reset();
    CommOptions options;
    options.timeout_seconds = host.timeout_seconds();
    device_comm_ = std::make_unique<NcclCommunicator>(MPI_COMM_WORLD, as_cuda(be), options);
    device_comm_backend_ = &be;
  }
  return *device_comm_;
#else
  throw InvalidArgument("--device", "cuda",
                        "distributed runs on GPUs need NCCL, and this longattn was built without "
                        "it (NCCL was not found when it was configured); use --device cpu");
#endif
}

std::vector<std::string> ProcessGroup::gather(const std::string& mine) const {
  if (!active_) return {mine};
  int len = static_cast<int>(mine.size());
  std::vector<int> lens(rank_ == 0 ? world_ : 0);
  LONGATTN_MPI_CHECK(MPI_Gather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, 0, MPI_COMM_WORLD));
  std::vector<int> displs(lens.size());
  int total = 0;
  for (size_t r = 0; r < lens.size(); ++r) {
    displs[r] = total;
    total += lens[r];
  }
  std::string all(static_cast<size_t>(total), '\0');
  LONGATTN_MPI_CHECK(MPI_Gatherv(mine.data(), len, MPI_CHAR, all.data(), lens.data(),
                                 displs.data(), MPI_CHAR, 0, MPI_COMM_WORLD));
  std::vector<std::string> out;
  for (size_t r = 0; r < lens.size(); ++r) out.push_back(all.substr(displs[r], lens[r]));
  return out;
}

int ProcessGroup::max_all(int value) const {
  if (!active_) return value;
  int out = value;
  LONGATTN_MPI_CHECK(MPI_Allreduce(&value, &out, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
  return out;
}

void ProcessGroup::send(const void* buf, size_t bytes, int dest, int tag) const {
  LONGATTN_CHECK_ARG(bytes <= static_cast<size_t>(INT_MAX), "bytes", bytes,
                     "a single command-line transfer is limited to 2 GiB");
  LONGATTN_MPI_CHECK(MPI_Send(buf, static_cast<int>(bytes), MPI_BYTE, dest, tag, MPI_COMM_WORLD));
}

void ProcessGroup::recv(void* buf, size_t bytes, int source, int tag) const {
  LONGATTN_CHECK_ARG(bytes <= static_cast<size_t>(INT_MAX), "bytes", bytes,
                     "a single command-line transfer is limited to 2 GiB");
  LONGATTN_MPI_CHECK(MPI_Recv(buf, static_cast<int>(bytes), MPI_BYTE, source, tag,
                              MPI_COMM_WORLD, MPI_STATUS_IGNORE));
}

void ProcessGroup::abort(int code) const {
  if (active_) MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);
}

}  // namespace longattn::cli
