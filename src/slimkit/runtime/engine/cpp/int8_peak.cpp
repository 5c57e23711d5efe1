// The int8 operator's peak on this CPU, which the runtime benchmark reports each layer's throughput as a
// fraction of (engine/build.py: int8_peak).
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <thread>
#include <vector>

#include "dispatch.hpp"

namespace slimkit {

// The int8 peak of the int8 operator's inner step on this CPU: multiplies per second over `threads` threads
// running pair_sum_peak at once for about `seconds`; the figure the operator's throughput is a fraction of.
extern "C" double slimkit_int8_peak(int threads, double seconds) {
    std::vector<int32_t> sinks(static_cast<size_t>(threads), 0);
    std::vector<int64_t> done(static_cast<size_t>(threads), 0);
    const auto started = std::chrono::steady_clock::now();
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t)
        workers.emplace_back([&, t] {
            while (std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count() < seconds)
                done[t] += pair_sum_peak_any(1 << 16, &sinks[t]);
        });
    for (auto& worker : workers) worker.join();
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    int64_t total = 0;
    for (int t = 0; t < threads; ++t) total += done[t];
    return static_cast<double>(total) / elapsed;
}

}  // namespace slimkit
