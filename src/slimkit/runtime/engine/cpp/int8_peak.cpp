// The int8 peak of each int8 kernel's inner step on this CPU, which the runtime benchmark reports a layer's
// throughput as a fraction of (engine/build.py: int8_peak).
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <iterator>
#include <thread>
#include <vector>

#include "dispatch.hpp"

namespace slimkit {

// Multiplies per second over `threads` threads running `kernel`'s inner step from registers for about
// `seconds`: "generic", "avx2" and "avx512/i16" the int16 pair sums (portable loop, vpmaddwd + vpaddd,
// vpdpwssd), "avx512/u8-ymm" and "avx512/u8-zmm" vpdpbusd in 256- or 512-bit registers. -1 for a kernel this
// CPU does not run (or an unknown name).
extern "C" double slimkit_int8_peak(const char* kernel, int threads, double seconds) {
    const struct {
        const char* name;
        Isa isa;
        int variant;  // -1: the pair-sum step, else quad_sum_peak's variant
    } steps[] = {{"generic", Isa::generic, -1}, {"avx2", Isa::avx2, -1}, {"avx512/i16", Isa::avx512, -1},
                 {"avx512/u8-ymm", Isa::avx512, 0}, {"avx512/u8-zmm", Isa::avx512, 1}};
    const auto* step = std::find_if(std::begin(steps), std::end(steps),
                                    [&](const auto& s) { return std::strcmp(s.name, kernel) == 0; });
    try {
        if (step == std::end(steps) || !cpu_runs(step->isa)) return -1.0;
    } catch (const std::exception&) {  // an unknown SLIMKIT_ISA
        return -1.0;
    }
    std::vector<int32_t> sinks(static_cast<size_t>(threads), 0);
    std::vector<int64_t> done(static_cast<size_t>(threads), 0);
    const auto started = std::chrono::steady_clock::now();
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t)
        workers.emplace_back([&, t] {
            while (std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count() < seconds)
                done[t] += step->variant < 0 ? pair_sum_peak_any(step->isa, 1 << 16, &sinks[t])
                                             : quad_sum_peak_any(step->isa, step->variant, 1 << 16, &sinks[t]);
        });
    for (auto& worker : workers) worker.join();
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    int64_t total = 0;
    for (int t = 0; t < threads; ++t) total += done[t];
    return static_cast<double>(total) / elapsed;
}

}  // namespace slimkit
