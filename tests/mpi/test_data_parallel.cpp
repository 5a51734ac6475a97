// Data-parallel mode: whole sequences per rank, the batch split over ranks, any variant, no
// communication inside attention; equal to the single-process variant on the whole batch.
#include <gtest/gtest.h>

#include "attention/distributed.hpp"
#include "mpi_env.hpp"
#include "runtime/error.hpp"

namespace longattn {
namespace {

using testing::kDistTolerance;
using testing::max_abs_diff;
using testing::test_backend;
using testing::test_comm;

AttentionSpec variant_spec(const std::string& name, bool causal) {
  AttentionSpec s;
  s.variant = name;
  s.causal = causal;
  s.block_size = 4;
  s.dilated.segment_lengths = {8, 16};
  s.dilated.dilation_rates = {1, 2};
  s.sparse.block_size = 4;
  s.sparse.window_size = 8;
  s.sparse.window_given = true;
  return s;
}

TEST(DataParallel, EveryVariantMatchesTheWholeBatchWithoutCommunication) {
  Communicator& comm = test_comm();
  const Shape g{12, 16, 2, 4};  // 12 sequences: divisible by 1, 2, 3 and 4 ranks
  for (const char* name : {"dense", "dilated", "block_sparse"})
    for (bool causal : {false, true}) {
      const AttentionSpec spec = variant_spec(name, causal);
      const auto in = testing::random_inputs(g, DType::F64, 700 + causal);
      DistributedInputs din;
      if (comm.rank() == 0)
        din = DistributedInputs{in.q.view(), in.k.view(), in.v.view(), in.d_o.view()};
      const auto r = run_distributed(spec, DistConfig{DistMode::DataParallel, Sharding::Zigzag},
                                     comm, test_backend(), din, true);
      if (comm.rank() == 0) {
        testing::expect_matches_single_process(r, spec, in, kDistTolerance, name);
      }
      EXPECT_EQ(r.forward_total.bytes_sent, 0) << name;
      EXPECT_EQ(r.backward_total.bytes_sent, 0) << name;
    }
}

TEST(DataParallel, BatchMustSplitEvenly) {
  Communicator& comm = test_comm();
  if (comm.world() < 2) GTEST_SKIP() << "any batch splits over one rank";
  const Shape g{comm.world() + 1, 8, 1, 4};
  try {
    validate_distributed(AttentionSpec{}, DistConfig{DistMode::DataParallel}, comm.world(), &g);
    ADD_FAILURE() << "accepted a batch that does not split";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("batch"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace longattn
