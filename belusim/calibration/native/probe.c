/*
 * belusim native probe: memory-path microbenchmarks for `belusim calibrate probe`.
 *
 * Built on first use with the system C compiler (plain -O2, no -march=native) and called
 * through ctypes.  Instruction-set extensions (AVX, AVX-512, CLFLUSHOPT, CLWB) are used only
 * from functions compiled with target attributes and entered only after a CPUID check, so
 * calling a feature the CPU lacks returns BP_EUNSUPPORTED instead of raising SIGILL.
 *
 * Every function returns an int status (BP_OK or a negative BP_E* code) unless noted.
 * Times are nanoseconds from CLOCK_MONOTONIC.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__)
#define BP_X86 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define BP_X86 0
#endif

#define BP_ABI_VERSION 3

#define BP_OK 0
#define BP_EUNSUPPORTED (-1)
#define BP_EINVAL (-2)
#define BP_ESYS (-3)
#define BP_ETIMEOUT (-4)
#define BP_EVERIFY (-5)

/* feature bits */
#define BP_F_X86 (1 << 0)
#define BP_F_SSE2 (1 << 1)
#define BP_F_CLFLUSH (1 << 2)
#define BP_F_CLFLUSHOPT (1 << 3)
#define BP_F_CLWB (1 << 4)
#define BP_F_AVX (1 << 5)
#define BP_F_AVX512F (1 << 6)

/* flush methods */
#define BP_FLUSH_NONE (-1)
#define BP_FLUSH_CLFLUSH 0
#define BP_FLUSH_CLFLUSHOPT 1
#define BP_FLUSH_CLWB 2

/* non-temporal copy variants */
#define BP_NT_AUTO 0
#define BP_NT_SSE2 1
#define BP_NT_AVX 2
#define BP_NT_AVX512 3

#define LINE 64

static int g_detected = -1;
static int g_mask = -1; /* tests can hide features to exercise the unsupported paths */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------------ features */

static int detect_features(void) {
    int f = 0;
#if BP_X86
    unsigned a = 0, b = 0, c = 0, d = 0;
    int os_avx = 0, os_avx512 = 0;
    f |= BP_F_X86;
    if (__get_cpuid(1, &a, &b, &c, &d)) {
        if (d & (1u << 19)) f |= BP_F_CLFLUSH;
        if (d & (1u << 26)) f |= BP_F_SSE2;
        if ((c & (1u << 27)) && (c & (1u << 28))) { /* OSXSAVE and AVX */
            unsigned lo, hi;
            __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0)); /* xgetbv */
            if ((lo & 0x6) == 0x6) os_avx = 1;
            if ((lo & 0xe6) == 0xe6) os_avx512 = 1;
            if (os_avx) f |= BP_F_AVX;
        }
    }
    if (__get_cpuid_max(0, 0) >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        if (b & (1u << 23)) f |= BP_F_CLFLUSHOPT;
        if (b & (1u << 24)) f |= BP_F_CLWB;
        if ((b & (1u << 16)) && os_avx512) f |= BP_F_AVX512F;
    }
#endif
    return f;
}

static int features(void) {
    if (g_detected < 0) g_detected = detect_features();
    return g_mask < 0 ? g_detected : (g_detected & g_mask);
}

int bp_abi_version(void) { return BP_ABI_VERSION; }
int bp_features(void) { return features(); }
int bp_detected_features(void) {
    if (g_detected < 0) g_detected = detect_features();
    return g_detected;
}
/* mask < 0 restores the detected set; otherwise only features in mask are reported/used */
void bp_set_feature_mask(int mask) { g_mask = mask; }

double bp_timer_overhead_ns(void) {
    uint64_t t0 = now_ns(), t = t0;
    for (int i = 0; i < 1000; i++) t = now_ns();
    return (double)(t - t0) / 1000.0;
}

/* ------------------------------------------------------------------ fences and flushes */

static inline void store_fence(void) {
#if BP_X86
    _mm_sfence();
#else
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}

static inline void full_fence(void) {
#if BP_X86
    _mm_mfence();
#else
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}

#if BP_X86
static void lines_clflush(const char *p, size_t n) {
    uintptr_t a = (uintptr_t)p & ~(uintptr_t)(LINE - 1), end = (uintptr_t)p + n;
    for (; a < end; a += LINE) _mm_clflush((const void *)a);
}

__attribute__((target("clflushopt"))) static void lines_clflushopt(const char *p, size_t n) {
    uintptr_t a = (uintptr_t)p & ~(uintptr_t)(LINE - 1), end = (uintptr_t)p + n;
    for (; a < end; a += LINE) _mm_clflushopt((void *)a);
}

__attribute__((target("clwb"))) static void lines_clwb(const char *p, size_t n) {
    uintptr_t a = (uintptr_t)p & ~(uintptr_t)(LINE - 1), end = (uintptr_t)p + n;
    for (; a < end; a += LINE) _mm_clwb((void *)a);
}
#endif

static int flush_supported(int method) {
    int f = features();
    switch (method) {
    case BP_FLUSH_NONE: return 1;
    case BP_FLUSH_CLFLUSH: return (f & BP_F_CLFLUSH) != 0;
    case BP_FLUSH_CLFLUSHOPT: return (f & BP_F_CLFLUSHOPT) != 0;
    case BP_FLUSH_CLWB: return (f & BP_F_CLWB) != 0;
    default: return 0;
    }
}

/* flush lines without the trailing fence; caller checked flush_supported() */
static void flush_lines(const void *p, size_t n, int method) {
#if BP_X86
    switch (method) {
    case BP_FLUSH_CLFLUSH: lines_clflush((const char *)p, n); break;
    case BP_FLUSH_CLFLUSHOPT: lines_clflushopt((const char *)p, n); break;
    case BP_FLUSH_CLWB: lines_clwb((const char *)p, n); break;
    default: break;
    }
#else
    (void)p; (void)n; (void)method;
#endif
}

/* Write-side flush: lines reach memory, then a store fence orders them before later stores.
 * CLFLUSH is ordered with stores; CLFLUSHOPT and CLWB need the SFENCE. */
int bp_flush(void *p, size_t n, int method) {
    if (!p && n) return BP_EINVAL;
    if (!flush_supported(method)) return BP_EUNSUPPORTED;
    if (method == BP_FLUSH_NONE) return BP_OK;
    flush_lines(p, n, method);
    if (method == BP_FLUSH_CLFLUSH) full_fence(); else store_fence();
    return BP_OK;
}

/* ------------------------------------------------------------------ reads */

static uint64_t read_sum(const void *p, size_t n) {
    const uint64_t *w = (const uint64_t *)p;
    size_t nw = n / 8, i = 0;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (; i + 4 <= nw; i += 4) {
        s0 += w[i];
        s1 += w[i + 1];
        s2 += w[i + 2];
        s3 += w[i + 3];
    }
    for (; i < nw; i++) s0 += w[i];
    const unsigned char *b = (const unsigned char *)p + nw * 8;
    for (size_t j = 0; j < n % 8; j++) s1 += b[j];
    return s0 + s1 + s2 + s3;
}

/* Read-side flush: invalidate the lines, full fence (so the loads below miss), then read. */
int bp_flush_read(void *p, size_t n, int method, uint64_t *sum_out) {
    if (!p && n) return BP_EINVAL;
    if (method == BP_FLUSH_CLWB) return BP_EINVAL; /* CLWB does not invalidate: useless to a reader */
    if (!flush_supported(method)) return BP_EUNSUPPORTED;
    if (method != BP_FLUSH_NONE) {
        flush_lines(p, n, method);
        full_fence();
    }
    uint64_t s = read_sum(p, n);
    if (sum_out) *sum_out = s;
    return BP_OK;
}

uint64_t bp_read_sum(const void *p, size_t n) { return read_sum(p, n); }

/* ------------------------------------------------------------------ copies */

int bp_copy_cached(void *dst, const void *src, size_t n) {
    if ((!dst || !src) && n) return BP_EINVAL;
    memcpy(dst, src, n);
    return BP_OK;
}

#if BP_X86
/* Edge bytes (the part of an unaligned head or tail that 4/8-byte MOVNTI cannot cover) are
 * written with ordinary stores and their lines flushed with CLFLUSH afterwards, so no part of
 * the destination is left only in the cache. */
static void nt_edge(char *d, const char *s, size_t n, int *dirty) {
    while (n && ((uintptr_t)d & 3)) { *d++ = *s++; n--; *dirty = 1; }
    while (n >= 4 && ((uintptr_t)d & 7)) {
        int v; memcpy(&v, s, 4); _mm_stream_si32((int *)d, v); d += 4; s += 4; n -= 4;
    }
#if defined(__x86_64__)
    while (n >= 8) {
        long long v; memcpy(&v, s, 8); _mm_stream_si64((long long *)d, v); d += 8; s += 8; n -= 8;
    }
#endif
    while (n >= 4) {
        int v; memcpy(&v, s, 4); _mm_stream_si32((int *)d, v); d += 4; s += 4; n -= 4;
    }
    while (n) { *d++ = *s++; n--; *dirty = 1; }
}

static size_t head_len(const char *d, size_t align, size_t n) {
    size_t h = (align - ((uintptr_t)d & (align - 1))) & (align - 1);
    return h > n ? n : h;
}

static void nt_copy_sse2(char *d, const char *s, size_t n) {
    int dirty = 0;
    char *d0 = d;
    size_t h = head_len(d, 16, n);
    nt_edge(d, s, h, &dirty);
    d += h; s += h; n -= h;
    for (; n >= 64; n -= 64, d += 64, s += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)s);
        __m128i b = _mm_loadu_si128((const __m128i *)(s + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(s + 32));
        __m128i e = _mm_loadu_si128((const __m128i *)(s + 48));
        _mm_stream_si128((__m128i *)d, a);
        _mm_stream_si128((__m128i *)(d + 16), b);
        _mm_stream_si128((__m128i *)(d + 32), c);
        _mm_stream_si128((__m128i *)(d + 48), e);
    }
    for (; n >= 16; n -= 16, d += 16, s += 16)
        _mm_stream_si128((__m128i *)d, _mm_loadu_si128((const __m128i *)s));
    nt_edge(d, s, n, &dirty);
    if (dirty) {
        lines_clflush(d0, h ? h : 1);
        if (n) lines_clflush(d, n);
    }
    _mm_sfence();
}

__attribute__((target("avx"))) static void nt_copy_avx(char *d, const char *s, size_t n) {
    int dirty = 0;
    char *d0 = d;
    size_t h = head_len(d, 32, n);
    nt_edge(d, s, h, &dirty);
    d += h; s += h; n -= h;
    for (; n >= 128; n -= 128, d += 128, s += 128) {
        __m256i a = _mm256_loadu_si256((const __m256i *)s);
        __m256i b = _mm256_loadu_si256((const __m256i *)(s + 32));
        __m256i c = _mm256_loadu_si256((const __m256i *)(s + 64));
        __m256i e = _mm256_loadu_si256((const __m256i *)(s + 96));
        _mm256_stream_si256((__m256i *)d, a);
        _mm256_stream_si256((__m256i *)(d + 32), b);
        _mm256_stream_si256((__m256i *)(d + 64), c);
        _mm256_stream_si256((__m256i *)(d + 96), e);
    }
    for (; n >= 32; n -= 32, d += 32, s += 32)
        _mm256_stream_si256((__m256i *)d, _mm256_loadu_si256((const __m256i *)s));
    nt_edge(d, s, n, &dirty);
    if (dirty) {
        lines_clflush(d0, h ? h : 1);
        if (n) lines_clflush(d, n);
    }
    _mm_sfence();
    _mm256_zeroupper();
}

__attribute__((target("avx512f"))) static void nt_copy_avx512(char *d, const char *s, size_t n) {
    int dirty = 0;
    char *d0 = d;
    size_t h = head_len(d, 64, n);
    nt_edge(d, s, h, &dirty);
    d += h; s += h; n -= h;
    for (; n >= 128; n -= 128, d += 128, s += 128) {
        __m512i a = _mm512_loadu_si512((const void *)s);
        __m512i b = _mm512_loadu_si512((const void *)(s + 64));
        _mm512_stream_si512((void *)d, a);
        _mm512_stream_si512((void *)(d + 64), b);
    }
    for (; n >= 64; n -= 64, d += 64, s += 64)
        _mm512_stream_si512((void *)d, _mm512_loadu_si512((const void *)s));
    nt_edge(d, s, n, &dirty);
    if (dirty) {
        lines_clflush(d0, h ? h : 1);
        if (n) lines_clflush(d, n);
    }
    _mm_sfence();
}
#endif

static int nt_variant_supported(int variant) {
    int f = features();
    switch (variant) {
    case BP_NT_AUTO:
    case BP_NT_SSE2: return (f & BP_F_SSE2) && (f & BP_F_CLFLUSH);
    case BP_NT_AVX: return (f & BP_F_AVX) && (f & BP_F_CLFLUSH);
    case BP_NT_AVX512: return (f & BP_F_AVX512F) && (f & BP_F_CLFLUSH);
    default: return 0;
    }
}

static int nt_copy(void *dst, const void *src, size_t n, int variant) {
#if BP_X86
    int f = features();
    if (variant == BP_NT_AUTO) variant = (f & BP_F_AVX) ? BP_NT_AVX : BP_NT_SSE2;
    if (!nt_variant_supported(variant)) return BP_EUNSUPPORTED;
    switch (variant) {
    case BP_NT_SSE2: nt_copy_sse2((char *)dst, (const char *)src, n); break;
    case BP_NT_AVX: nt_copy_avx((char *)dst, (const char *)src, n); break;
    case BP_NT_AVX512: nt_copy_avx512((char *)dst, (const char *)src, n); break;
    default: return BP_EUNSUPPORTED;
    }
    return BP_OK;
#else
    (void)dst; (void)src; (void)n; (void)variant;
    return BP_EUNSUPPORTED;
#endif
}

/* Non-temporal copy: streaming stores for the aligned body, MOVNTI for 4/8-byte edges,
 * ordinary stores + CLFLUSH for the few unaligned edge bytes, then SFENCE. */
int bp_copy_nt(void *dst, const void *src, size_t n, int variant) {
    if ((!dst || !src) && n) return BP_EINVAL;
    if (n == 0) return nt_variant_supported(variant ? variant : BP_NT_SSE2) ? BP_OK : BP_EUNSUPPORTED;
    return nt_copy(dst, src, n, variant);
}

/* ------------------------------------------------------------------ patterns */

static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

/* word i of a pattern is mix64(seed + i); the buffer must be 8-byte aligned, n multiple of 8 */
int bp_fill_pattern(void *p, size_t n, uint64_t seed) {
    if ((!p && n) || ((uintptr_t)p & 7) || (n & 7)) return BP_EINVAL;
    uint64_t *w = (uint64_t *)p;
    for (size_t i = 0; i < n / 8; i++) w[i] = mix64(seed + i);
    return BP_OK;
}

/* returns the byte offset of the first mismatching word, or -1 when all match */
int64_t bp_check_pattern(const void *p, size_t n, uint64_t seed) {
    if ((!p && n) || ((uintptr_t)p & 7) || (n & 7)) return -2;
    const uint64_t *w = (const uint64_t *)p;
    for (size_t i = 0; i < n / 8; i++)
        if (w[i] != mix64(seed + i)) return (int64_t)(i * 8);
    return -1;
}

/* ------------------------------------------------------------------ 16 KB style operations */

#define OP_CACHED_COPY 0
#define OP_NT_COPY 1
#define OP_COPY_FLUSH 2
#define OP_FLUSH 3
#define OP_FLUSH_READ 4
#define OP_READ 5

static void evict(const void *p, size_t n) {
#if BP_X86
    if (features() & BP_F_CLFLUSH) {
        lines_clflush((const char *)p, n);
        _mm_mfence();
    }
#else
    (void)p; (void)n;
#endif
}

/* Time `iters` repetitions of one operation on n bytes; out_ns[i] gets each repetition.
 * Untimed preparation before each repetition puts the buffers in a fixed state:
 *   CACHED_COPY, NT_COPY, COPY_FLUSH: src cached, dst evicted (a write into memory that the
 *       writer does not hold); COPY_FLUSH then flushes dst with `method`.
 *   FLUSH: dst dirty in the cache (memcpy from src), then only the flush is timed.
 *   FLUSH_READ: src cached (a stale copy), then flush + full fence + read are timed.
 *   READ: src evicted, then the read is timed. */
int bp_bench_op(int op, void *dst, const void *src, size_t n, int method, int iters, double *out_ns,
                uint64_t *sink) {
    if (iters <= 0 || !out_ns || n == 0) return BP_EINVAL;
    uint64_t s = 0;
    switch (op) {
    case OP_CACHED_COPY:
        if (!dst || !src) return BP_EINVAL;
        break;
    case OP_NT_COPY:
        if (!dst || !src) return BP_EINVAL;
        if (!nt_variant_supported(BP_NT_AUTO)) return BP_EUNSUPPORTED;
        break;
    case OP_COPY_FLUSH:
    case OP_FLUSH:
        if (!dst || !src) return BP_EINVAL;
        if (method == BP_FLUSH_NONE) return BP_EINVAL;
        if (!flush_supported(method)) return BP_EUNSUPPORTED;
        break;
    case OP_FLUSH_READ:
        if (!src) return BP_EINVAL;
        if (method == BP_FLUSH_NONE || method == BP_FLUSH_CLWB) return BP_EINVAL;
        if (!flush_supported(method)) return BP_EUNSUPPORTED;
        break;
    case OP_READ:
        if (!src) return BP_EINVAL;
        break;
    default: return BP_EINVAL;
    }
    for (int it = 0; it < iters; it++) {
        uint64_t t0, t1;
        __asm__ volatile("" ::: "memory");
        switch (op) {
        case OP_CACHED_COPY:
            s += read_sum(src, n); evict(dst, n);
            t0 = now_ns(); memcpy(dst, src, n); t1 = now_ns();
            break;
        case OP_NT_COPY:
            s += read_sum(src, n); evict(dst, n);
            t0 = now_ns(); nt_copy(dst, src, n, BP_NT_AUTO); t1 = now_ns();
            break;
        case OP_COPY_FLUSH:
            s += read_sum(src, n); evict(dst, n);
            t0 = now_ns(); memcpy(dst, src, n); bp_flush(dst, n, method); t1 = now_ns();
            break;
        case OP_FLUSH:
            memcpy(dst, src, n); full_fence();
            t0 = now_ns(); bp_flush(dst, n, method); t1 = now_ns();
            break;
        case OP_FLUSH_READ: {
            uint64_t v = 0;
            s += read_sum(src, n); full_fence();
            t0 = now_ns(); bp_flush_read((void *)src, n, method, &v); t1 = now_ns();
            s += v;
            break;
        }
        default: /* OP_READ */
            evict(src, n);
            t0 = now_ns(); s += read_sum(src, n); t1 = now_ns();
            break;
        }
        out_ns[it] = (double)(t1 - t0);
    }
    if (sink) *sink = s;
    return BP_OK;
}

/* ------------------------------------------------------------------ pointer chase */

static inline uint64_t xorshift64(uint64_t *st) {
    uint64_t x = *st;
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    return *st = x;
}

/* One random cyclic permutation (Sattolo) over the nodes buf + i*stride, i < bytes/stride:
 * each node holds the address of the next.  n_nodes_out gets the node count. */
int bp_chase_build(void *buf, size_t bytes, size_t stride, uint64_t seed, uint64_t *n_nodes_out) {
    if (!buf || stride < sizeof(void *) || (stride % sizeof(void *))) return BP_EINVAL;
    size_t n = bytes / stride;
    if (n < 2 || n > 0xffffffffull) return BP_EINVAL;
    uint32_t *perm = (uint32_t *)malloc(n * sizeof(uint32_t));
    if (!perm) return BP_ESYS;
    for (size_t i = 0; i < n; i++) perm[i] = (uint32_t)i;
    uint64_t st = seed ? seed : 0x9e3779b97f4a7c15ull;
    for (size_t i = n - 1; i > 0; i--) {
        size_t j = (size_t)(xorshift64(&st) % i); /* j < i: Sattolo, one single cycle */
        uint32_t t = perm[i]; perm[i] = perm[j]; perm[j] = t;
    }
    char *b = (char *)buf;
    for (size_t i = 0; i < n; i++) *(void **)(b + i * stride) = (void *)(b + (size_t)perm[i] * stride);
    free(perm);
    if (n_nodes_out) *n_nodes_out = n;
    return BP_OK;
}

/* Follow `steps` dependent loads from buf; ns_per_load_out gets the mean load-to-use time. */
int bp_chase_run(void *buf, uint64_t steps, double *ns_per_load_out, void **end_out) {
    if (!buf || steps == 0) return BP_EINVAL;
    void **p = (void **)buf;
    uint64_t k = steps / 8, r = steps % 8;
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < k; i++) {
        p = (void **)*p; p = (void **)*p; p = (void **)*p; p = (void **)*p;
        p = (void **)*p; p = (void **)*p; p = (void **)*p; p = (void **)*p;
    }
    for (uint64_t i = 0; i < r; i++) p = (void **)*p;
    uint64_t t1 = now_ns();
    if (ns_per_load_out) *ns_per_load_out = (double)(t1 - t0) / (double)steps;
    if (end_out) *end_out = (void *)p;
    return BP_OK;
}

/* Walk the chain from buf until it returns to buf (or leaves the buffer); count the distinct
 * nodes seen with a bitmap, and the cycle length.  A single cycle has distinct == cycle == n. */
int bp_chase_count(void *buf, size_t bytes, size_t stride, uint64_t *distinct_out, uint64_t *cycle_out) {
    if (!buf || stride == 0) return BP_EINVAL;
    size_t n = bytes / stride;
    unsigned char *seen = (unsigned char *)calloc((n + 7) / 8, 1);
    if (!seen) return BP_ESYS;
    char *b = (char *)buf, *p = b;
    uint64_t distinct = 0, cycle = 0;
    int rc = BP_OK;
    for (;;) {
        uintptr_t off = (uintptr_t)(p - b);
        if (p < b || off >= n * stride || off % stride) { rc = BP_EVERIFY; break; }
        size_t i = off / stride;
        if (!(seen[i / 8] & (1u << (i % 8)))) { seen[i / 8] |= (unsigned char)(1u << (i % 8)); distinct++; }
        else if (p != b) { rc = BP_EVERIFY; break; } /* entered a cycle that skips the start */
        p = *(char **)p;
        cycle++;
        if (p == b) break;
        if (cycle > n) { rc = BP_EVERIFY; break; }
    }
    free(seen);
    if (distinct_out) *distinct_out = distinct;
    if (cycle_out) *cycle_out = cycle;
    return rc;
}

/* ------------------------------------------------------------------ multi-thread bandwidth */

#define BW_READ 0
#define BW_WRITE 1
#define BW_NTWRITE 2
#define BW_COPY 3
#define BW_NTCOPY 4

typedef struct {
    int kind, tid, iters;
    char *dst;
    const char *src;
    size_t bytes;
    volatile int *go;   /* 0: wait, 1: run, -1: give up */
    int *ready;
    uint64_t t0, t1, sum;
    int rc;
} bw_arg;

static inline uint64_t bw_pattern(int tid) { return 0x5a5a5a5a00000000ull | (uint64_t)(tid + 1); }

static void write_pattern_cached(char *d, size_t n, uint64_t v) {
    uint64_t *w = (uint64_t *)d;
    size_t nw = n / 8;
    for (size_t i = 0; i < nw; i++) w[i] = v;
}

#if BP_X86
static void write_pattern_nt(char *d, size_t n, uint64_t v) {
    __m128i x = _mm_set1_epi64x((long long)v);
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        _mm_stream_si128((__m128i *)(d + i), x);
        _mm_stream_si128((__m128i *)(d + i + 16), x);
        _mm_stream_si128((__m128i *)(d + i + 32), x);
        _mm_stream_si128((__m128i *)(d + i + 48), x);
    }
    for (; i + 16 <= n; i += 16) _mm_stream_si128((__m128i *)(d + i), x);
    _mm_sfence();
}
#endif

static void *bw_thread(void *vp) {
    bw_arg *a = (bw_arg *)vp;
    __atomic_add_fetch(a->ready, 1, __ATOMIC_SEQ_CST);
    int g;
    while ((g = __atomic_load_n(a->go, __ATOMIC_ACQUIRE)) == 0) sched_yield();
    if (g < 0) return NULL;
    a->t0 = now_ns();
    uint64_t s = 0;
    for (int it = 0; it < a->iters; it++) {
        __asm__ volatile("" ::: "memory"); /* every pass really reads/writes memory */
        switch (a->kind) {
        case BW_READ: s = read_sum(a->src, a->bytes); break;
        case BW_WRITE: write_pattern_cached(a->dst, a->bytes, bw_pattern(a->tid)); break;
        case BW_NTWRITE:
#if BP_X86
            write_pattern_nt(a->dst, a->bytes, bw_pattern(a->tid));
#endif
            break;
        case BW_COPY: memcpy(a->dst, a->src, a->bytes); break;
        case BW_NTCOPY: a->rc = nt_copy(a->dst, a->src, a->bytes, BP_NT_AUTO); break;
        }
    }
    a->t1 = now_ns();
    a->sum = s;
    return NULL;
}

/* `threads` threads each work on their own slice (src/dst + tid*bytes_per_thread) for `iters`
 * passes.  seconds_out: from the first thread's start to the last one's end.  sum_out: the
 * wrapped sum of all 64-bit words read in the last pass (READ only).  Writes fill each slice
 * with the word 0x5a5a5a5a00000000 | (tid + 1); slices must be 64-byte aligned for writes. */
int bp_bandwidth(int kind, void *dst, const void *src, size_t bytes_per_thread, int threads, int iters,
                 double *seconds_out, uint64_t *sum_out) {
    if (threads <= 0 || iters <= 0 || bytes_per_thread == 0 || threads > 4096) return BP_EINVAL;
    if (kind < BW_READ || kind > BW_NTCOPY) return BP_EINVAL;
    if ((kind == BW_READ || kind == BW_COPY || kind == BW_NTCOPY) && !src) return BP_EINVAL;
    if (kind != BW_READ && !dst) return BP_EINVAL;
    if ((kind == BW_WRITE || kind == BW_NTWRITE) && (((uintptr_t)dst & 63) || (bytes_per_thread & 63)))
        return BP_EINVAL;
    if ((kind == BW_NTWRITE || kind == BW_NTCOPY) && !nt_variant_supported(BP_NT_AUTO)) return BP_EUNSUPPORTED;
    bw_arg *args = (bw_arg *)calloc((size_t)threads, sizeof(bw_arg));
    pthread_t *tids = (pthread_t *)calloc((size_t)threads, sizeof(pthread_t));
    if (!args || !tids) { free(args); free(tids); return BP_ESYS; }
    volatile int go = 0;
    int ready = 0, started = 0, rc = BP_OK;
    for (int t = 0; t < threads; t++) {
        args[t].kind = kind; args[t].tid = t; args[t].iters = iters; args[t].bytes = bytes_per_thread;
        args[t].dst = dst ? (char *)dst + (size_t)t * bytes_per_thread : NULL;
        args[t].src = src ? (const char *)src + (size_t)t * bytes_per_thread : NULL;
        args[t].go = &go;
        args[t].ready = &ready;
        if (pthread_create(&tids[t], NULL, bw_thread, &args[t])) { rc = BP_ESYS; break; }
        started++;
    }
    while (__atomic_load_n(&ready, __ATOMIC_SEQ_CST) < started) sched_yield();
    __atomic_store_n(&go, rc == BP_OK ? 1 : -1, __ATOMIC_RELEASE);
    uint64_t t0 = UINT64_MAX, t1 = 0, sum = 0;
    for (int t = 0; t < started; t++) {
        pthread_join(tids[t], NULL);
        if (args[t].t0 && args[t].t0 < t0) t0 = args[t].t0;
        if (args[t].t1 > t1) t1 = args[t].t1;
        sum += args[t].sum;
        if (args[t].rc) rc = args[t].rc;
    }
    free(args); free(tids);
    if (rc != BP_OK) return rc;
    if (seconds_out) *seconds_out = (double)(t1 - t0) * 1e-9;
    if (sum_out) *sum_out = sum;
    return rc;
}

/* ------------------------------------------------------------------ shared-slot RPC */

/* Slot i of a region: request line at i*256, response line at i*256 + 128 (the gap keeps the
 * adjacent-line prefetcher from pairing them).  A message is one 64-byte line:
 *   word 0: sequence number (0 = empty), words 1..6: payload, word 7: checksum.
 * Writers use non-temporal stores + SFENCE; readers flush the line, fence and load it. */
#define RPC_SLOT 256
#define RPC_RESP 128
#define RPC_TAG_REQ 0x7265710000000000ull
#define RPC_TAG_RESP 0x7273700000000000ull

static inline uint64_t msg_check(const uint64_t *m) {
    uint64_t c = 0x243f6a8885a308d3ull;
    for (int i = 0; i < 7; i++) c = mix64(c ^ m[i]);
    return c;
}

/* No fence here: callers write a batch of messages, then one store fence publishes them. */
static void msg_write(char *line, uint64_t seq, uint64_t tag) {
    uint64_t m[8];
    m[0] = seq;
    for (int i = 1; i < 7; i++) m[i] = mix64(tag ^ (seq * 8 + (uint64_t)i));
    m[7] = msg_check(m);
#if BP_X86
    __m128i a = _mm_loadu_si128((const __m128i *)&m[0]);
    __m128i b = _mm_loadu_si128((const __m128i *)&m[2]);
    __m128i c = _mm_loadu_si128((const __m128i *)&m[4]);
    __m128i d = _mm_loadu_si128((const __m128i *)&m[6]);
    _mm_stream_si128((__m128i *)line, a);
    _mm_stream_si128((__m128i *)(line + 16), b);
    _mm_stream_si128((__m128i *)(line + 32), c);
    _mm_stream_si128((__m128i *)(line + 48), d);
#else
    volatile uint64_t *v = (volatile uint64_t *)line;
    for (int i = 1; i < 8; i++) v[i] = m[i];
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    v[0] = m[0];
#endif
}

/* Invalidate the lines of `count` slots (line i at base + i*RPC_SLOT + off), then one full
 * fence: the flushes of a batch overlap (CLFLUSHOPT) and the loads after them miss together. */
static void poll_flush(char *base, int count, size_t off, int flush, const uint64_t *active) {
    if (flush != BP_FLUSH_NONE) {
        for (int i = 0; i < count; i++)
            if (!active || active[i]) flush_lines(base + (size_t)i * RPC_SLOT + off, LINE, flush);
        full_fence();
    } else {
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
    }
}

/* returns 0 with *seq (0 for an empty line), or 1 when the line was torn (checksum mismatch) */
static int msg_read(char *line, uint64_t *seq) {
    uint64_t m[8];
    volatile uint64_t *v = (volatile uint64_t *)line;
    for (int i = 0; i < 8; i++) m[i] = v[i];
    if (m[0] == 0) { *seq = 0; return 0; }
    if (m[7] != msg_check(m)) return 1;
    *seq = m[0];
    return 0;
}

static int pin_to(int cpu) {
#ifdef __linux__
    if (cpu < 0) return 0;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof(set), &set);
#else
    (void)cpu;
    return 0;
#endif
}

static void rpc_server(char *base, int depth, uint64_t total, int flush, uint64_t *expect) {
    for (int i = 0; i < depth; i++) expect[i] = 1;
    uint64_t served = 0, spins = 0, last = now_ns();
    while (served < total) {
        int progressed = 0;
        poll_flush(base, depth, 0, flush, NULL);
        for (int i = 0; i < depth && served < total; i++) {
            char *req = base + (size_t)i * RPC_SLOT;
            uint64_t seq = 0;
            if (msg_read(req, &seq) == 0 && seq == expect[i]) {
                msg_write(req + RPC_RESP, seq, RPC_TAG_RESP);
                expect[i]++;
                served++;
                progressed = 1;
            }
        }
        if (progressed) { store_fence(); spins = 0; continue; }
        if ((++spins & 4095) == 0) {
            uint64_t t = now_ns();
            if (spins == 4096) last = t;
            else if (t - last > 5000000000ull) _exit(3); /* client gone: never linger */
        }
    }
    _exit(0);
}

/* Run `ops` request/response round trips between this process (client) and a forked server
 * process over `region` (it must be MAP_SHARED, at least depth*256 bytes, 64-byte aligned).
 * depth 1: ping-pong; rtt_ns (if not NULL) gets each of the `ops` round trips after `warmup`
 * untimed ones.  depth > 1: the client keeps `depth` requests outstanding in `depth` slots and
 * the single-threaded server polls them in batches (flush every slot's line, one fence, read
 * them all); elapsed_s_out covers all ops (no warmup).
 * CPUs < 0 leave placement to the scheduler.  torn_out counts reads that saw a torn line. */
int bp_rpc_run(void *region, size_t region_len, int depth, int64_t ops, int64_t warmup, int flush,
               int client_cpu, int server_cpu, double *rtt_ns, double *elapsed_s_out, int64_t *torn_out) {
    if (!region || depth <= 0 || ops <= 0 || warmup < 0 || ((uintptr_t)region & 63)) return BP_EINVAL;
    if ((size_t)depth * RPC_SLOT > region_len) return BP_EINVAL;
    if (flush == BP_FLUSH_CLWB) return BP_EINVAL;
    if (!flush_supported(flush)) return BP_EUNSUPPORTED;
    if (depth > 1) warmup = 0;
    char *base = (char *)region;
    uint64_t total = (uint64_t)(ops + warmup);
    uint64_t *expect = (uint64_t *)calloc((size_t)depth, sizeof(uint64_t));
    uint64_t *outstanding = (uint64_t *)calloc((size_t)depth, sizeof(uint64_t));
    uint64_t *t_post = (uint64_t *)calloc((size_t)depth, sizeof(uint64_t));
    if (!expect || !outstanding || !t_post) { free(expect); free(outstanding); free(t_post); return BP_ESYS; }
    memset(base, 0, (size_t)depth * RPC_SLOT);
    evict(base, (size_t)depth * RPC_SLOT);
    full_fence();

#ifdef __linux__
    cpu_set_t saved;
    int have_saved = sched_getaffinity(0, sizeof(saved), &saved) == 0;
#endif
    pid_t pid = fork();
    if (pid < 0) { free(expect); free(outstanding); free(t_post); return BP_ESYS; }
    if (pid == 0) {
        pin_to(server_cpu);
        rpc_server(base, depth, total, flush, expect); /* never returns */
    }
    pin_to(client_cpu);

    int rc = BP_OK;
    int64_t torn = 0;
    uint64_t posted = 0, done = 0, start = now_ns(), last_progress = start;
    uint64_t next_seq_slot0 = 1;
    /* post the first wave */
    for (int i = 0; i < depth && posted < total; i++) {
        outstanding[i] = 1;
        t_post[i] = now_ns();
        msg_write(base + (size_t)i * RPC_SLOT, 1, RPC_TAG_REQ);
        posted++;
    }
    store_fence();
    (void)next_seq_slot0;
    uint64_t spins = 0;
    while (done < total) {
        int progressed = 0;
        poll_flush(base, depth, RPC_RESP, flush, outstanding);
        for (int i = 0; i < depth; i++) {
            if (!outstanding[i]) continue;
            uint64_t seq = 0;
            int t = msg_read(base + (size_t)i * RPC_SLOT + RPC_RESP, &seq);
            if (t) { torn++; continue; }
            if (seq != outstanding[i]) continue;
            uint64_t now = now_ns();
            if (depth == 1 && rtt_ns && done >= (uint64_t)warmup) rtt_ns[done - (uint64_t)warmup] = (double)(now - t_post[i]);
            done++;
            progressed = 1;
            if (posted < total) {
                outstanding[i] = seq + 1;
                t_post[i] = now_ns();
                msg_write(base + (size_t)i * RPC_SLOT, seq + 1, RPC_TAG_REQ);
                posted++;
            } else {
                outstanding[i] = 0;
            }
            if (depth == 1 && done == (uint64_t)warmup) start = now_ns();
        }
        if (progressed) { store_fence(); spins = 0; last_progress = 0; continue; }
        if ((++spins & 1023) == 0) {
            uint64_t t = now_ns();
            if (last_progress == 0) last_progress = t;
            else if (t - last_progress > 2000000000ull) { rc = BP_ETIMEOUT; break; }
        }
    }
    uint64_t end = now_ns();
    if (rc != BP_OK) kill(pid, SIGKILL);
    int status = 0;
    /* the server exits once it has served `total` requests */
    uint64_t wait_start = now_ns();
    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid) break;
        if (w < 0 && errno != EINTR) break;
        if (now_ns() - wait_start > 3000000000ull) { kill(pid, SIGKILL); waitpid(pid, &status, 0); break; }
        usleep(100);
    }
#ifdef __linux__
    if (have_saved) sched_setaffinity(0, sizeof(saved), &saved);
#endif
    if (rc == BP_OK && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) rc = BP_EVERIFY;
    free(expect); free(outstanding); free(t_post);
    if (elapsed_s_out) *elapsed_s_out = (double)(end - start) * 1e-9;
    if (torn_out) *torn_out = torn;
    return rc;
}

/* ------------------------------------------------------------------ memory mapping */

/* Map `length` bytes.  fd < 0: anonymous memory (shared if `shared`, so a forked server sees
 * it), aligned to 2 MiB and advised per `thp` (1: MADV_HUGEPAGE, 2: MADV_NOHUGEPAGE).
 * fd >= 0: a file or device window mapped MAP_SHARED from `offset` (which the caller aligned).
 * The mapping base and length to pass to bp_unmap are returned through base_out/maplen_out. */
void *bp_map(int fd, uint64_t offset, size_t length, int writable, int shared, int thp, void **base_out,
             size_t *maplen_out, int *errno_out) {
    int prot = PROT_READ | (writable ? PROT_WRITE : 0);
    void *p;
    if (errno_out) *errno_out = 0;
    if (length == 0) { if (errno_out) *errno_out = EINVAL; return NULL; }
    if (fd < 0) {
        size_t align = 2u << 20, maplen = length + align;
        p = mmap(NULL, maplen, prot, (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) { if (errno_out) *errno_out = errno; return NULL; }
        char *a = (char *)(((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1));
#ifdef MADV_HUGEPAGE
        if (thp == 1) madvise(a, length, MADV_HUGEPAGE);
#endif
#ifdef MADV_NOHUGEPAGE
        if (thp == 2) madvise(a, length, MADV_NOHUGEPAGE);
#endif
        if (base_out) *base_out = p;
        if (maplen_out) *maplen_out = maplen;
        return a;
    }
    p = mmap(NULL, length, prot, MAP_SHARED, fd, (off_t)offset);
    if (p == MAP_FAILED) { if (errno_out) *errno_out = errno; return NULL; }
    if (base_out) *base_out = p;
    if (maplen_out) *maplen_out = length;
    return p;
}

int bp_unmap(void *base, size_t maplen) { return munmap(base, maplen) == 0 ? BP_OK : BP_ESYS; }

/* Touch every page (write a zero word) so that later timings exclude page faults. */
int bp_prefault(void *p, size_t n, int write) {
    if (!p && n) return BP_EINVAL;
    long pg = sysconf(_SC_PAGESIZE);
    if (pg <= 0) pg = 4096;
    volatile char *c = (volatile char *)p;
    uint64_t s = 0;
    for (size_t i = 0; i < n; i += (size_t)pg) {
        if (write) c[i] = 0; else s += c[i];
    }
    if (n) { if (write) c[n - 1] = 0; else s += c[n - 1]; }
    (void)s;
    return BP_OK;
}
