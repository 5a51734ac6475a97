// Shard geometry (contiguous, zigzag, batch split) and the host copies to and from shards.
#include "runtime/sharding.hpp"

#include "runtime/error.hpp"

namespace longattn {

const char* sharding_name(Sharding s) { return s == Sharding::Zigzag ? "zigzag" : "contiguous"; }

Sharding parse_sharding(const std::string& s, const std::string& arg) {
  if (s == "contiguous") return Sharding::Contiguous;
  if (s == "zigzag") return Sharding::Zigzag;
  throw InvalidArgument(arg, s, "must be one of: contiguous, zigzag");
}

ShardLayout::ShardLayout(Sharding kind, int64_t N, int world) : kind_(kind), n_(N), world_(world) {
  LONGATTN_CHECK_ARG(world >= 1, "world size", world, "must be at least 1");
  LONGATTN_CHECK_ARG(N > 0, "seq_len", N, "must be positive");
  if (kind == Sharding::Contiguous) {
    LONGATTN_CHECK_ARG(N % world == 0, "seq_len", N,
                       "must be divisible by the number of ranks (" + std::to_string(world) +
                           ") for contiguous sharding");
  } else {
    LONGATTN_CHECK_ARG(N % (2 * static_cast<int64_t>(world)) == 0, "seq_len", N,
                       "must be divisible by 2 x the number of ranks (" +
                           std::to_string(2 * world) +
                           ") for zigzag sharding, which cuts the sequence into 2P chunks");
  }
}

std::vector<ShardPiece> ShardLayout::pieces(int rank) const {
  LONGATTN_CHECK_ARG(rank >= 0 && rank < world_, "rank", rank,
                     "must be in [0, " + std::to_string(world_) + ")");
  const int64_t c = local_len();
  if (kind_ == Sharding::Contiguous) return {ShardPiece{0, rank * c, c}};
  const int64_t h = c / 2;  // chunk length N / 2P
  return {ShardPiece{0, rank * h, h},
          ShardPiece{h, (2 * static_cast<int64_t>(world_) - 1 - rank) * h, h}};
}

int ShardLayout::owner(int64_t n) const {
  LONGATTN_CHECK_ARG(n >= 0 && n < n_, "row", n, "must be in [0, " + std::to_string(n_) + ")");
  if (kind_ == Sharding::Contiguous) return static_cast<int>(n / local_len());
  const int64_t chunk = n / (local_len() / 2);
  return static_cast<int>(chunk < world_ ? chunk : 2 * world_ - 1 - chunk);
}

int64_t ShardLayout::local_row(int64_t n) const {
  if (kind_ == Sharding::Contiguous) return n % local_len();
  const int64_t h = local_len() / 2, chunk = n / h;
  return (chunk < world_ ? 0 : h) + n % h;
}

int64_t ShardLayout::global_row(int rank, int64_t local) const {
  for (const ShardPiece& p : pieces(rank))
    if (local >= p.local && local < p.local + p.len) return p.global + (local - p.local);
  throw InvalidArgument("local row", std::to_string(local),
                        "must be in [0, " + std::to_string(local_len()) + ")");
}

namespace {
void check_shard_shapes(const ShardLayout& layout, const TensorView& full,
                        const TensorView& shard) {
  LONGATTN_CHECK_ARG(full.N == layout.seq_len(), "full tensor", full.shape_string(),
                     "must have " + std::to_string(layout.seq_len()) + " rows");
  LONGATTN_CHECK_ARG(
      shard.B == full.B && shard.N == layout.local_len() && shard.H == full.H && shard.D == full.D,
      "shard", shard.shape_string(),
      "must be [" + std::to_string(full.B) + ", " + std::to_string(layout.local_len()) + ", " +
          std::to_string(full.H) + ", " + std::to_string(full.D) + "]");
}
}  // namespace

void extract_shard(const ShardLayout& layout, int rank, const TensorView& full,
                   const TensorView& shard) {
  check_shard_shapes(layout, full, shard);
  for (const ShardPiece& p : layout.pieces(rank))
    copy_view(shard.rows(p.local, p.len), full.rows(p.global, p.len));
}

void insert_shard(const ShardLayout& layout, int rank, const TensorView& shard,
                  const TensorView& full) {
  check_shard_shapes(layout, full, shard);
  for (const ShardPiece& p : layout.pieces(rank))
    copy_view(full.rows(p.global, p.len), shard.rows(p.local, p.len));
}

BatchSplit batch_split(int64_t B, int world, int rank) {
  LONGATTN_CHECK_ARG(world >= 1, "world size", world, "must be at least 1");
  LONGATTN_CHECK_ARG(B > 0 && B % world == 0, "batch", B,
                     "must be a positive multiple of the number of ranks (" +
                         std::to_string(world) + ") in data-parallel mode");
  LONGATTN_CHECK_ARG(rank >= 0 && rank < world, "rank", rank,
                     "must be in [0, " + std::to_string(world) + ")");
  const int64_t per = B / world;
  return BatchSplit{rank * per, per};
}

}  // namespace longattn
