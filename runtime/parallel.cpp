// parallel_for: contiguous chunks per thread, first exception propagated.
#include "runtime/parallel.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace longattn {

int default_cpu_threads() {
  if (const char* e = std::getenv("LONGATTN_CPU_THREADS")) {
    const int n = std::atoi(e);
    if (n > 0) return n;
  }
  const unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(hc);
}

void parallel_for(int64_t n, int num_threads, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  int t = num_threads > 0 ? num_threads : default_cpu_threads();
  t = static_cast<int>(std::min<int64_t>(t, n));
  if (t <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<int64_t> next{0};
  std::exception_ptr err;
  std::mutex err_mutex;
  auto worker = [&] {
    for (;;) {
      const int64_t i = next.fetch_add(1);
      if (i >= n) return;
      try {
        fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(err_mutex);
        if (!err) err = std::current_exception();
        next = n;
        return;
      }
    }
  };
  std::vector<std::thread> threads;
  for (int k = 0; k < t - 1; ++k) threads.emplace_back(worker);
  worker();
  for (auto& th : threads) th.join();
  if (err) std::rethrow_exception(err);
}

}  // namespace longattn
