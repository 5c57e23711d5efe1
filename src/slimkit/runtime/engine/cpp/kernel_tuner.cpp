// See kernel_tuner.hpp.
#include "kernel_tuner.hpp"

#include <cpuid.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <utility>

#ifndef SLIMKIT_BUILD_ID
#define SLIMKIT_BUILD_ID "development"
#endif

namespace slimkit {
namespace {

constexpr int kRounds = 3;                      // timed runs per kernel, taking turns; the minimum counts
constexpr size_t kMaxCacheBytes = 4u << 20;     // a larger cache file is not read
constexpr size_t kMaxFieldBytes = 1024;         // a longer op, signature or kernel name is not a valid line

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::avx512: return "avx512";
        case Isa::avx2: return "avx2";
        default: return "generic";
    }
}

bool cpu_has(Isa isa) {
    __builtin_cpu_init();
    switch (isa) {
        case Isa::avx512:
            return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vpopcntdq") &&
                   __builtin_cpu_supports("avx512vnni");
        case Isa::avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
        default: return true;
    }
}

// The highest build SLIMKIT_ISA allows (avx512 when unset); an unknown value is an error, never a guess.
Isa isa_cap() {
    const char* cap = std::getenv("SLIMKIT_ISA");
    if (cap == nullptr || *cap == '\0') return Isa::avx512;
    for (Isa isa : {Isa::generic, Isa::avx2, Isa::avx512})
        if (std::strcmp(cap, isa_name(isa)) == 0) return isa;
    throw std::invalid_argument(std::string("SLIMKIT_ISA=") + cap + " is not a kernel build; use generic, avx2 or avx512");
}

// The CPU's identity: vendor, brand, family/model/stepping and the features the builds use. A cache file
// made on one CPU is never read on another.
std::string cpu_identity() {
    unsigned a = 0, b = 0, c = 0, d = 0;
    char vendor[13] = {};
    __get_cpuid(0, &a, &b, &c, &d);
    std::memcpy(vendor, &b, 4);
    std::memcpy(vendor + 4, &d, 4);
    std::memcpy(vendor + 8, &c, 4);
    unsigned signature = 0;
    if (__get_cpuid(1, &a, &b, &c, &d)) signature = a;
    char brand[49] = {};
    for (unsigned leaf = 0; leaf < 3; ++leaf)
        if (__get_cpuid(0x80000002 + leaf, &a, &b, &c, &d)) {
            const unsigned regs[4] = {a, b, c, d};
            std::memcpy(brand + 16 * leaf, regs, 16);
        }
    std::ostringstream out;
    out << vendor << " " << brand << " signature " << std::hex << signature << std::dec;
    for (Isa isa : {Isa::avx2, Isa::avx512}) out << " " << isa_name(isa) << (cpu_has(isa) ? "+" : "-");
    return out.str();
}

uint64_t fnv1a(const std::string& text) {
    uint64_t hash = 1469598103934665603ull;
    for (unsigned char ch : text) hash = (hash ^ ch) * 1099511628211ull;
    return hash;
}

bool valid_field(const std::string& field) {
    if (field.empty() || field.size() > kMaxFieldBytes) return false;
    return std::all_of(field.begin(), field.end(), [](unsigned char ch) { return ch >= 0x20 && ch < 0x7f; });
}

struct Record {
    std::string kernel;
    std::string times;  // microseconds per kernel, "name=us,..." (for reports; not read back for choices)
};

class Choices {
public:
    static Choices& instance() {
        static Choices choices;
        return choices;
    }

    // The remembered kernel for `key`, or null.
    const Record* find(const std::string& key) {
        load_once();
        const auto found = records_.find(key);
        return found == records_.end() ? nullptr : &found->second;
    }

    void remember(const std::string& key, Record record, bool persist = true) {
        records_[key] = std::move(record);
        if (persist) save();
    }

    void note(const std::string& node, const char* kernel) { nodes_[node] = kernel; }

    std::string node_table() const {
        std::string out;
        for (const auto& [node, kernel] : nodes_) out += node + "\t" + kernel + "\n";
        return out;
    }

    std::string table() const {
        std::string out;
        for (const auto& [key, record] : records_) out += key + "\t" + record.kernel + "\t" + record.times + "\n";
        return out;
    }

    std::mutex mutex;

private:
    std::string path() const {
        const char* off = std::getenv("SLIMKIT_TUNE_CACHE");
        if (off != nullptr && std::strcmp(off, "off") == 0) return {};
        std::string dir;
        if (const char* given = std::getenv("SLIMKIT_CACHE_DIR"); given != nullptr && *given != '\0') {
            dir = given;
        } else if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg != '\0') {
            dir = std::string(xdg) + "/slimkit";
        } else if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0') {
            dir = std::string(home) + "/.cache/slimkit";
        } else {
            return {};
        }
        char name[64];
        std::snprintf(name, sizeof(name), "/kernels-%016llx.tsv",
                      static_cast<unsigned long long>(fnv1a(identity_)));
        return dir + name;
    }

    // Reads the cache file once: every line "op|signature<TAB>kernel<TAB>times" whose fields are printable
    // and short; anything else is skipped (its kernel is then timed again), never trusted.
    void load_once() {
        if (loaded_) return;
        loaded_ = true;
        file_ = path();
        if (file_.empty()) return;
        read_into(records_);
    }

    void read_into(std::map<std::string, Record>& into) const {
        struct stat info {};
        if (stat(file_.c_str(), &info) != 0 || !S_ISREG(info.st_mode) || static_cast<size_t>(info.st_size) > kMaxCacheBytes)
            return;
        std::ifstream in(file_);
        std::string line;
        if (!std::getline(in, line) || line != header()) return;  // another CPU's or build's file: ignore it
        while (std::getline(in, line)) {
            const size_t first = line.find('\t'), second = line.find('\t', first + 1);
            if (first == std::string::npos || second == std::string::npos) continue;
            std::string key = line.substr(0, first), kernel = line.substr(first + 1, second - first - 1),
                        times = line.substr(second + 1);
            if (!valid_field(key) || !valid_field(kernel) || times.size() > kMaxFieldBytes) continue;
            into.emplace(std::move(key), Record{std::move(kernel), std::move(times)});
        }
    }

    std::string header() const { return "# slimkit kernel choices\t" + identity_; }

    // Writes the remembered choices, merged with what other processes added meanwhile, to a temporary file
    // that is renamed over the cache: a reader sees the old file or the new one. A cache that cannot be
    // written is skipped: choices then last for this process only.
    void save() const {
        if (file_.empty()) return;
        const std::string dir = file_.substr(0, file_.rfind('/'));
        for (size_t at = 1; (at = dir.find('/', at)) != std::string::npos; ++at) mkdir(dir.substr(0, at).c_str(), 0755);
        mkdir(dir.c_str(), 0755);
        std::map<std::string, Record> merged;
        read_into(merged);
        for (const auto& [key, record] : records_) merged[key] = record;
        const std::string temporary = file_ + ".tmp." + std::to_string(getpid());
        {
            std::ofstream out(temporary, std::ios::trunc);
            if (!out) return;
            out << header() << "\n";
            for (const auto& [key, record] : merged) out << key << "\t" << record.kernel << "\t" << record.times << "\n";
            out.flush();
            if (!out) {
                std::remove(temporary.c_str());
                return;
            }
        }
        if (const int fd = open(temporary.c_str(), O_RDONLY); fd >= 0) {
            fsync(fd);
            close(fd);
        }
        if (std::rename(temporary.c_str(), file_.c_str()) != 0) std::remove(temporary.c_str());
    }

    Choices() : identity_(cpu_identity() + " build " SLIMKIT_BUILD_ID) {}

    std::string identity_;
    std::string file_;
    bool loaded_ = false;
    std::map<std::string, Record> records_;
    std::map<std::string, std::string> nodes_;  // node name -> the kernel it last ran (this process only)
};

double seconds_of(const std::function<void(size_t)>& run, size_t kernel) {
    const auto started = std::chrono::steady_clock::now();
    run(kernel);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
}

}  // namespace

bool cpu_runs(Isa isa) { return cpu_has(isa) && isa <= isa_cap(); }

std::string runnable_builds() {
    std::string out;
    for (Isa isa : {Isa::generic, Isa::avx2, Isa::avx512})
        if (cpu_runs(isa)) out += (out.empty() ? "" : " ") + std::string(isa_name(isa));
    return out;
}

std::vector<size_t> runnable(const char* op, const std::vector<Kernel>& kernels) {
    const char* only = std::getenv("SLIMKIT_KERNEL");
    const std::string wanted = only == nullptr ? "" : only;
    std::vector<size_t> out;
    for (size_t i = 0; i < kernels.size(); ++i) {
        const std::string name = kernels[i].name;
        const bool named = wanted.empty() || name == wanted || name.rfind(wanted + "/", 0) == 0;
        if (named && cpu_runs(kernels[i].isa)) out.push_back(i);
    }
    std::string names;  // for the error alone (this runs on every call)
    for (size_t i = 0; i < kernels.size() && out.empty(); ++i) names += (names.empty() ? "" : ", ") + std::string(kernels[i].name);
    if (out.empty())
        throw std::invalid_argument(std::string("slimkit::") + op + ": no kernel this CPU runs matches SLIMKIT_KERNEL='" +
                                    wanted + "' and SLIMKIT_ISA (" + op + " has " + names + ")");
    return out;
}

Choice choose(const char* op, const std::string& signature, const std::vector<Kernel>& kernels,
              const std::function<void(size_t)>& run) {
    const std::vector<size_t> allowed = runnable(op, kernels);
    std::string key = std::string(op) + "|" + signature;
    if (const char* only = std::getenv("SLIMKIT_KERNEL")) key += std::string("|only ") + only;
    if (const char* cap = std::getenv("SLIMKIT_ISA")) key += std::string("|cap ") + cap;
    Choices& choices = Choices::instance();
    std::lock_guard<std::mutex> hold(choices.mutex);
    if (const Record* known = choices.find(key))
        for (size_t i : allowed)
            if (known->kernel == kernels[i].name) return {i, false};
    if (allowed.size() == 1) {  // nothing to time; remembered for this process's report alone
        choices.remember(key, Record{kernels[allowed[0]].name, ""}, false);
        return {allowed[0], false};
    }
    std::vector<double> best(kernels.size(), std::numeric_limits<double>::infinity());
    for (size_t i : allowed) run(i);  // warm-up: caches, scratch buffers, page faults
    for (int round = 0; round < kRounds; ++round)
        for (size_t i : allowed) best[i] = std::min(best[i], seconds_of(run, i));
    size_t fastest = allowed[0];
    std::string times;
    for (size_t i : allowed) {
        if (best[i] < best[fastest]) fastest = i;
        char entry[96];
        std::snprintf(entry, sizeof(entry), "%s%s=%.1f", times.empty() ? "" : ",", kernels[i].name, best[i] * 1e6);
        times += entry;
    }
    run(fastest);  // the outputs come from the chosen kernel, as every later call's will
    choices.remember(key, Record{kernels[fastest].name, times});
    return {fastest, true};
}

void note_node(const std::string& node, const char* kernel) {
    Choices& choices = Choices::instance();
    std::lock_guard<std::mutex> hold(choices.mutex);
    choices.note(node, kernel);
}

}  // namespace slimkit

// The builds this CPU runs under SLIMKIT_ISA, "generic avx2 avx512" (engine/build.py: runnable_builds).
extern "C" const char* slimkit_builds() {
    static std::string builds;
    try {
        builds = slimkit::runnable_builds();
    } catch (const std::exception& error) {  // an unknown SLIMKIT_ISA: said, never guessed
        builds = std::string("error: ") + error.what();
    }
    return builds.c_str();
}

// The choices this process made or read, one per line: "op|signature<TAB>kernel<TAB>name=us,...". The pointer
// stays valid until the next call.
extern "C" const char* slimkit_kernel_choices() {
    static std::string snapshot;
    slimkit::Choices& choices = slimkit::Choices::instance();
    std::lock_guard<std::mutex> hold(choices.mutex);
    snapshot = choices.table();
    return snapshot.c_str();
}

// The kernel each node of this process's models last ran, one per line: "node<TAB>kernel".
extern "C" const char* slimkit_node_kernels() {
    static std::string snapshot;
    slimkit::Choices& choices = slimkit::Choices::instance();
    std::lock_guard<std::mutex> hold(choices.mutex);
    snapshot = choices.node_table();
    return snapshot.c_str();
}

// The CPU's identity as the kernel cache keys it, with the library build: what a time measured here belongs to
// (engine/build.py: cpu_identity; slimkit.target caches its latency tables under it).
extern "C" const char* slimkit_cpu_identity() {
    static const std::string identity = slimkit::cpu_identity() + " build " SLIMKIT_BUILD_ID;
    return identity.c_str();
}
