// A minimal parallel-for over an index range on std::thread (the CPU backend's only threading).
#pragma once
#include <cstdint>
#include <functional>

namespace longattn {

// Runs fn(i) for i in [0, n) on up to num_threads threads (0 = hardware concurrency, capped
// by LONGATTN_CPU_THREADS). Exceptions from fn are rethrown on the caller's thread.
void parallel_for(int64_t n, int num_threads, const std::function<void(int64_t)>& fn);
int default_cpu_threads();

}  // namespace longattn
