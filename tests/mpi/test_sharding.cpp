// Sequence sharding (contiguous, zigzag), its index maps, the host scatter/gather round trip,
// the batch split, and the divisibility errors; then scatter/gather through the communicator.
#include <gtest/gtest.h>

#include <set>

#include "attention/distributed.hpp"
#include "mpi_env.hpp"
#include "runtime/error.hpp"
#include "runtime/sharding.hpp"

namespace longattn {
namespace {

TEST(Sharding, ContiguousAndZigzagPieces) {
  const ShardLayout c(Sharding::Contiguous, 24, 4);
  EXPECT_EQ(c.local_len(), 6);
  ASSERT_EQ(c.pieces(2).size(), 1u);
  EXPECT_EQ(c.pieces(2)[0].global, 12);
  const ShardLayout z(Sharding::Zigzag, 24, 4);  // 8 chunks of 3: rank r holds r and 7 - r
  const auto p1 = z.pieces(1);
  ASSERT_EQ(p1.size(), 2u);
  EXPECT_EQ(p1[0].local, 0);
  EXPECT_EQ(p1[0].global, 3);
  EXPECT_EQ(p1[0].len, 3);
  EXPECT_EQ(p1[1].local, 3);
  EXPECT_EQ(p1[1].global, 18);
  EXPECT_EQ(p1[1].len, 3);
}

TEST(Sharding, IndexMapsAreConsistentBijections) {
  for (Sharding kind : {Sharding::Contiguous, Sharding::Zigzag})
    for (int P : {1, 2, 3, 4, 5}) {
      const int64_t N = 2 * P * 7;
      const ShardLayout l(kind, N, P);
      std::set<std::pair<int, int64_t>> seen;
      for (int64_t n = 0; n < N; ++n) {
        const int r = l.owner(n);
        const int64_t local = l.local_row(n);
        ASSERT_GE(local, 0);
        ASSERT_LT(local, l.local_len());
        EXPECT_EQ(l.global_row(r, local), n) << sharding_name(kind) << " P=" << P;
        seen.insert({r, local});
      }
      EXPECT_EQ(static_cast<int64_t>(seen.size()), N);
    }
}

TEST(Sharding, ExtractInsertRoundTrip) {
  const Tensor full = Tensor::randn(DType::F64, 2, 24, 3, 4, 5);
  for (Sharding kind : {Sharding::Contiguous, Sharding::Zigzag}) {
    const ShardLayout l(kind, 24, 3);
    Tensor back(DType::F64, 2, 24, 3, 4);
    for (int r = 0; r < 3; ++r) {
      Tensor shard(DType::F32, 2, 8, 3, 4);  // dtype converted on the way
      extract_shard(l, r, full.view(), shard.view());
      EXPECT_EQ(shard.at(1, 0, 2, 3), static_cast<float>(full.at(1, l.global_row(r, 0), 2, 3)));
      insert_shard(l, r, shard.view(), back.view());
    }
    EXPECT_LT(compare(back.view(), full.view()).max_abs, 1e-6);
  }
}

TEST(Sharding, DivisibilityErrorsNameTheRule) {
  try {
    ShardLayout(Sharding::Contiguous, 10, 4);
    FAIL() << "accepted N=10 over 4 ranks";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("seq_len = 10"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("divisible by the number of ranks (4)"), std::string::npos)
        << e.what();
  }
  try {
    ShardLayout(Sharding::Zigzag, 12, 4);
    FAIL() << "accepted N=12 over 2x4 zigzag chunks";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("(8)"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ShardLayout(Sharding::Contiguous, 8, 0), InvalidArgument);
  EXPECT_THROW(parse_sharding("diagonal"), InvalidArgument);
  EXPECT_EQ(parse_sharding("zigzag"), Sharding::Zigzag);
}

TEST(Sharding, BatchSplit) {
  EXPECT_EQ(batch_split(6, 3, 2).begin, 4);
  EXPECT_EQ(batch_split(6, 3, 2).count, 2);
  EXPECT_THROW(batch_split(5, 2, 0), InvalidArgument);
}

// Scatter from rank 0 and gather back through the communicator reproduce the full tensor,
// and each rank's shard holds exactly its rows.
TEST(Sharding, ScatterGatherThroughTheCommunicator) {
  Communicator& c = testing::test_comm();
  Backend& be = testing::test_backend();
  const int P = c.world();
  for (Sharding kind : {Sharding::Contiguous, Sharding::Zigzag}) {
    AttentionSpec spec;
    auto attn = make_distributed_attention(spec, DistConfig{DistMode::Ring, kind}, c);
    const Shape g{2, 4 * P, 2, 3};
    const Tensor full = Tensor::randn(DType::F64, g.B, g.N, g.H, g.D, 99);
    const Shape l = attn->local_shape(g);
    DeviceTensor local(be, DType::F64, l.B, l.N, l.H, l.D);
    scatter_from_root(*attn, be, c.rank() == 0 ? full.view() : TensorView{}, local.view());
    const ShardLayout layout(kind, g.N, P);
    for (int64_t n = 0; n < l.N; ++n)
      EXPECT_EQ(load(local.view(), 1, n, 1, 2), full.at(1, layout.global_row(c.rank(), n), 1, 2));
    Tensor back(DType::F64, g.B, g.N, g.H, g.D);
    gather_to_root(*attn, be, local.view(), c.rank() == 0 ? back.view() : TensorView{});
    if (c.rank() == 0) EXPECT_EQ(compare(back.view(), full.view()).max_abs, 0.0);
  }
}

}  // namespace
}  // namespace longattn
