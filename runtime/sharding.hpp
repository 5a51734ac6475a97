// Sequence sharding over ranks: contiguous (rank r holds tokens [r N/P, (r+1) N/P)) or zigzag
// (the sequence cut into 2P chunks, rank r holds chunks r and 2P-1-r, which balances causal
// work), the batch split of data-parallel mode, and host copies between full tensors and shards.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/tensor.hpp"

namespace longattn {

enum class Sharding { Contiguous, Zigzag };
const char* sharding_name(Sharding s);
// "contiguous" or "zigzag"; anything else throws InvalidArgument naming `arg`.
Sharding parse_sharding(const std::string& s, const std::string& arg = "sharding");

// Rows a rank holds as one run: its local rows [local, local + len) are the global rows
// [global, global + len).
struct ShardPiece {
  int64_t local = 0, global = 0, len = 0;
};

// How N tokens are spread over `world` ranks. Every rank holds N / world rows.
class ShardLayout {
 public:
  // Throws InvalidArgument when N is not a positive multiple of world (contiguous) or of
  // 2 * world (zigzag), or world < 1.
  ShardLayout(Sharding kind, int64_t N, int world);
  Sharding kind() const { return kind_; }
  int64_t seq_len() const { return n_; }
  int world() const { return world_; }
  int64_t local_len() const { return n_ / world_; }
  // The runs of `rank`, in local order (one for contiguous, two for zigzag).
  std::vector<ShardPiece> pieces(int rank) const;
  // Which rank holds global row n, and at which local row.
  int owner(int64_t n) const;
  int64_t local_row(int64_t n) const;
  int64_t global_row(int rank, int64_t local) const;

 private:
  Sharding kind_;
  int64_t n_;
  int world_;
};

// Host copies between a full tensor view [B, N, H, D] and rank `rank`'s shard [B, N/P, H, D]
// (any dtypes, converted). Shapes are checked.
void extract_shard(const ShardLayout& layout, int rank, const TensorView& full,
                   const TensorView& shard);
void insert_shard(const ShardLayout& layout, int rank, const TensorView& shard,
                  const TensorView& full);

// Data-parallel split: rank r holds batches [begin, begin + count) = [r B/P, (r+1) B/P).
// Throws InvalidArgument when B is not a positive multiple of world.
struct BatchSplit {
  int64_t begin = 0, count = 0;
};
BatchSplit batch_split(int64_t B, int world, int rank);

}  // namespace longattn
