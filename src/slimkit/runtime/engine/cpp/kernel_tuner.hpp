// Kernel choice by measurement. Every operator has several kernels (one per instruction-set build, and variants
// within a build) that compute the same outputs bit for bit; which is fastest depends on the CPU, the layer's
// shape and the batch, so none is chosen because a CPU flag exists. The first call of an operator with a given
// signature times every kernel the CPU can run on the call's own inputs and keeps the fastest, in memory and
// in a cache file keyed by the CPU's identity and this library's build, so a later process reuses it.
//
// Switches: SLIMKIT_ISA=generic|avx2|avx512 caps the builds considered; SLIMKIT_KERNEL=<name> allows only
// the kernels of that name (a build, "avx512", or one kernel, "avx512/u8-zmm"; tests use it to run each one);
// SLIMKIT_CACHE_DIR moves the cache (default $XDG_CACHE_HOME/slimkit or ~/.cache/slimkit); SLIMKIT_TUNE_CACHE=off
// keeps choices in memory only.
#pragma once
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

namespace slimkit {

enum class Isa { generic = 0, avx2 = 1, avx512 = 2 };

// One kernel an operator can run: its name ("avx2", "avx512/u8-zmm"), the build it needs and which variant of
// that build's code it runs (the operator's own numbering; 0 where a build has one).
struct Kernel {
    const char* name;
    Isa isa;
    int variant;
};

// Whether this CPU has the instructions of `isa`'s build and SLIMKIT_ISA allows it.
bool cpu_runs(Isa isa);

// The builds cpu_runs allows, lowest first, as "generic avx2 avx512".
std::string runnable_builds();

// Of `kernels`, the indices this process may run: the CPU runs the build, SLIMKIT_ISA allows it and
// SLIMKIT_KERNEL (when set) names it or its build. An empty result is an error naming the switch.
std::vector<size_t> runnable(const char* op, const std::vector<Kernel>& kernels);

// The kernel to use for one call: the remembered choice for (op, signature) on this CPU, or, on the first
// call, the fastest of `allowed` timed by `run(i)` (which computes the call's outputs with kernel i; every
// kernel's outputs are the same). Returns the chosen index and whether `run` already produced the outputs.
struct Choice {
    size_t kernel;
    bool outputs_ready;
};
Choice choose(const char* op, const std::string& signature, const std::vector<Kernel>& kernels,
              const std::function<void(size_t)>& run);

// Notes which kernel the node named `node` (its friendly name in the model) ran, for reports.
void note_node(const std::string& node, const char* kernel);

}  // namespace slimkit
