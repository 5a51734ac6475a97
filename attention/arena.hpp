// A workspace kept across calls: one allocation on a backend that every call carves its
// buffers from (the ring's K/V and dK/dV buffers, the distributed dilated variant's gathers),
// replaced only by a larger one. Its memory may be used by communication (allocate(), not the
// stream-ordered scratch pool): a call waits for its exchanges before it returns, and the next
// call's exchanges are ordered after the work queued before them.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "kernels/backend.hpp"

namespace longattn {

// One allocation on a backend that every call carves its buffers from, kept across calls and
// replaced only by a larger one (the old one goes first, so the two are never held together;
// an allocation that throws leaves it empty).
class Arena {
 public:
  Arena() = default;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ~Arena() { release(); }
  std::byte* reserve(Backend& be, size_t bytes) {
    if (be_ != &be || be_id_ != be.instance_id() || bytes > bytes_) {
      release();
      data_ = be.allocate(std::max<size_t>(bytes, 1));
      be_ = &be;
      be_id_ = be.instance_id();
      bytes_ = bytes;
    }
    return static_cast<std::byte*>(data_);
  }
  void release() {
    if (be_) be_->deallocate(data_);
    be_ = nullptr;
    data_ = nullptr;
    bytes_ = 0;
  }
  size_t bytes() const { return bytes_; }

 private:
  Backend* be_ = nullptr;
  uint64_t be_id_ = 0;
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace longattn
