// Running one attention variant for the longattn command: the backend chosen by --device,
// host inputs uploaded, forward (and backward) timed, outputs downloaded to host tensors.
#pragma once
#include <boost/program_options.hpp>
#include <memory>
#include <string>

#include "attention/distributed.hpp"
#include "attention/variant.hpp"
#include "kernels/backend.hpp"
#include "launch/process_group.hpp"

namespace longattn::cli {

struct DeviceArgs {
  std::string device = "cpu";
  int threads = 0;  // CPU threads; 0: the cores of this node shared among its ranks
  int gpu = -1;     // CUDA device; -1: the local rank
};
boost::program_options::options_description device_options(DeviceArgs& a);

// Under mpirun: which distributed variant and sharding (--dist, --sharding, --comm-timeout).
struct DistArgs {
  std::string dist;  // empty: the variant's sequence-parallel mode
  std::string sharding = "contiguous";
  double timeout_s = 0.0;  // 0: LONGATTN_COMM_TIMEOUT or the communicator's default
  std::string split_rows = "0";  // DistConfig::split_rows (row_count)
};
boost::program_options::options_description dist_options(DistArgs& a);
// The config --dist and --sharding ask for; the mode defaults to default_dist_mode(spec).
DistConfig make_dist_config(const DistArgs& a, const AttentionSpec& spec);
// Refuses the distributed options in a process that is not under mpirun (they would do
// nothing there) and invalid values of those that take numbers.
void check_dist_args(const DistArgs& a, bool distributed);

// The backend --device asks for. cuda without CUDA in the build, or without a visible GPU,
// throws InvalidArgument saying which.
std::unique_ptr<Backend> make_backend(const DeviceArgs& a, const ProcessGroup& mpi);
// Threads the CPU work of this rank may use.
int cpu_threads(const DeviceArgs& a, const ProcessGroup& mpi);

struct HostInputs {
  Tensor q, k, v, d_o;  // d_o only for backward
};
struct HostOutputs {
  Tensor o, lse, dq, dk, dv;
  double forward_s = 0.0, backward_s = 0.0;  // median over the timed repeats
  size_t peak_bytes = 0;                     // backend allocations, inputs included
};

struct ExecOptions {
  bool backward = false;
  int warmup = 0;
  int repeats = 1;
};

// LSE element type of a run at `dtype`: fp64 for fp64 runs, fp32 otherwise.
DType lse_dtype(DType dtype);

HostOutputs execute(Backend& be, AttentionVariant& variant, const HostInputs& in,
                    const ExecOptions& opt);

// The same run over every rank of `group` through run_distributed: rank 0 holds `in` (other
// ranks pass empty inputs) and receives the full outputs; timings are the slowest rank's,
// medians over the repeats. Collective.
struct DistributedOutputs {
  HostOutputs out;  // rank 0
  DistCounters forward_total, backward_total;
};
DistributedOutputs execute_distributed(const ProcessGroup& group, Backend& be,
                                       const AttentionSpec& spec, const DistConfig& cfg,
                                       const HostInputs& in, const ExecOptions& opt);

// Random inputs of the given shape and dtype from a seed (q: seed, k: seed+1, v: seed+2,
// d_o: seed+3), drawn in fp64 and rounded to the dtype.
HostInputs random_inputs(const Shape& s, DType dtype, uint64_t seed, bool with_grad);

}  // namespace longattn::cli
