// The Communicator interface of longattn: ring send/recv as one grouped operation, sub-group
// exchange and all-gather, all-reduce, barrier and config-hash agreement. Backends: MPI over
// host buffers (comm/mpi_communicator.cpp) and NCCL over device buffers (comm/nccl/).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace longattn {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  virtual std::string backend() const = 0;
};

}  // namespace longattn
