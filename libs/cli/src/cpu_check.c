// The instruction sets this binary was compiled for, checked against this CPU
// and OS before anything else runs.
//
// Local builds use -C target-cpu=native for Rust and -march=native for ggml,
// whose C++ static initializers run before main: a binary copied to an older
// machine would die of SIGILL before any Rust code could check. This file is
// compiled for the baseline x86-64 (-march=x86-64, see build.rs) and runs as a
// constructor of priority 101, before every default-priority initializer
// (ggml's, Rust's main). LLPIPE_REQUIRED is the comma list of the target
// features rustc compiled for (build.rs, from CARGO_CFG_TARGET_FEATURE); those
// named below are checked with CPUID and, for the AVX families, XCR0 (whether
// the OS saves their registers). A missing one: one line on stderr naming it,
// exit 2.
#include <cpuid.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#ifndef LLPIPE_REQUIRED
#define LLPIPE_REQUIRED ""
#endif

enum reg { EAX, EBX, ECX, EDX };

// XCR0 bits a feature's registers need saved by the OS (SSE's are saved by
// FXSAVE on every x86-64 OS: none asked).
#define XAVX 0x6u            // XMM, YMM
#define XAVX512 0xe6u        // XMM, YMM, opmask, ZMM_Hi256, Hi16_ZMM

struct feature {
    const char *name;        // rustc's name (rustc --print target-features)
    unsigned leaf, subleaf;  // CPUID leaf
    enum reg reg;
    unsigned bit;
    unsigned xcr0;           // XCR0 bits needed (0: none)
};

static const struct feature FEATURES[] = {
    {"sse3", 1, 0, ECX, 0, 0},          {"pclmulqdq", 1, 0, ECX, 1, 0},
    {"ssse3", 1, 0, ECX, 9, 0},         {"fma", 1, 0, ECX, 12, XAVX},
    {"sse4.1", 1, 0, ECX, 19, 0},       {"sse4.2", 1, 0, ECX, 20, 0},
    {"movbe", 1, 0, ECX, 22, 0},           {"popcnt", 1, 0, ECX, 23, 0},
    {"aes", 1, 0, ECX, 25, 0},          {"avx", 1, 0, ECX, 28, XAVX},
    {"f16c", 1, 0, ECX, 29, XAVX},         {"bmi1", 7, 0, EBX, 3, 0},
    {"avx2", 7, 0, EBX, 5, XAVX},          {"bmi2", 7, 0, EBX, 8, 0},
    {"avx512f", 7, 0, EBX, 16, XAVX512},   {"avx512dq", 7, 0, EBX, 17, XAVX512},
    {"adx", 7, 0, EBX, 19, 0},             {"avx512ifma", 7, 0, EBX, 21, XAVX512},
    {"avx512cd", 7, 0, EBX, 28, XAVX512},  {"sha", 7, 0, EBX, 29, 0},
    {"avx512bw", 7, 0, EBX, 30, XAVX512},  {"avx512vl", 7, 0, EBX, 31, XAVX512},
    {"avx512vbmi", 7, 0, ECX, 1, XAVX512}, {"avx512vbmi2", 7, 0, ECX, 6, XAVX512},
    {"gfni", 7, 0, ECX, 8, 0},          {"vaes", 7, 0, ECX, 9, XAVX},
    {"vpclmulqdq", 7, 0, ECX, 10, XAVX},   {"avx512vnni", 7, 0, ECX, 11, XAVX512},
    {"avx512bitalg", 7, 0, ECX, 12, XAVX512},
    {"avx512vpopcntdq", 7, 0, ECX, 14, XAVX512},
    {"avx512fp16", 7, 0, EDX, 23, XAVX512},
    {"avxvnni", 7, 1, EAX, 4, XAVX},       {"avx512bf16", 7, 1, EAX, 5, XAVX512},
    {"lzcnt", 0x80000001u, 0, ECX, 5, 0},
};

static uint64_t xcr0(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27)))  // OSXSAVE
        return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static int has(const struct feature *f, uint64_t x) {
    unsigned r[4] = {0, 0, 0, 0};
    if (!__get_cpuid_count(f->leaf, f->subleaf, &r[EAX], &r[EBX], &r[ECX], &r[EDX]))
        return 0;
    return (r[f->reg] >> f->bit & 1) && (x & f->xcr0) == f->xcr0;
}

// Whether the comma list `list` holds `name`.
static int listed(const char *list, const char *name) {
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && memcmp(p, name, n) == 0) return 1;
        if (!end) break;
        p = end + 1;
    }
    return 0;
}

static char missing[512];

// The features compiled for and missing here, comma-separated ("" if none).
const char *llpipe_cpu_missing(void) {
    static int done;
    if (done) return missing;
    done = 1;
    uint64_t x = xcr0();
    size_t len = 0;
    for (size_t i = 0; i < sizeof FEATURES / sizeof FEATURES[0]; i++) {
        const struct feature *f = &FEATURES[i];
        if (!listed(LLPIPE_REQUIRED, f->name) || has(f, x)) continue;
        size_t n = strlen(f->name);
        if (len + n + 3 >= sizeof missing) break;
        if (len) {
            memcpy(missing + len, ", ", 2);
            len += 2;
        }
        memcpy(missing + len, f->name, n);
        len += n;
        missing[len] = 0;
    }
    return missing;
}

static void put(const char *s) {
    size_t n = strlen(s);
    while (n) {
        ssize_t w = write(2, s, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return;
        s += w;
        n -= (size_t)w;
    }
}

extern char *program_invocation_short_name;  // glibc

__attribute__((constructor(101))) static void llpipe_cpu_check(void) {
    const char *m = llpipe_cpu_missing();
    if (!*m) return;
    put(program_invocation_short_name);
    put(": error: this CPU (or its OS) lacks ");
    put(m);
    put(" that this binary was compiled for; build it on this machine, or use the "
        "portable build (scripts/build-portable.sh)\n");
    _exit(2);
}
