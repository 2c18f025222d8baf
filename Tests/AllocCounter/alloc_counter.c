// Allocation counting for tests of hot paths that must allocate nothing per message. Linked into the test
// binary only: its malloc and friends take precedence over the C library's for the whole process, count
// when the calling thread has asked for it, and forward.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include "alloc_counter.h"

static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);
static void (*real_free)(void *);

static __thread int counting;
static __thread unsigned long counted;

// dlsym may call calloc before the real one is known: that is served from a small static arena, which
// `free` recognises and leaves alone.
static char bootstrap[4096];
static size_t bootstrap_used;
static int resolving;

static void resolve(void) {
    resolving = 1;
    real_malloc = dlsym(RTLD_NEXT, "malloc");
    real_calloc = dlsym(RTLD_NEXT, "calloc");
    real_realloc = dlsym(RTLD_NEXT, "realloc");
    real_posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
    real_aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
    real_free = dlsym(RTLD_NEXT, "free");
    resolving = 0;
}

__attribute__((constructor)) static void init(void) { if (!real_malloc) resolve(); }

void alloc_counter_start(void) { counted = 0; counting = 1; }
unsigned long alloc_counter_stop(void) { counting = 0; return counted; }

void *malloc(size_t n) {
    if (!real_malloc) resolve();
    if (counting) counted++;
    return real_malloc(n);
}

void *calloc(size_t a, size_t b) {
    if (!real_calloc) {
        if (!resolving) resolve();
        if (!real_calloc) {
            size_t n = (a * b + 15) & ~(size_t)15;
            if (bootstrap_used + n > sizeof(bootstrap)) return NULL;
            void *p = bootstrap + bootstrap_used;
            bootstrap_used += n;
            return p;
        }
    }
    if (counting) counted++;
    return real_calloc(a, b);
}

void *realloc(void *p, size_t n) {
    if (!real_realloc) resolve();
    if (counting) counted++;
    return real_realloc(p, n);
}

int posix_memalign(void **p, size_t alignment, size_t n) {
    if (!real_posix_memalign) resolve();
    if (counting) counted++;
    return real_posix_memalign(p, alignment, n);
}

void *aligned_alloc(size_t alignment, size_t n) {
    if (!real_aligned_alloc) resolve();
    if (counting) counted++;
    return real_aligned_alloc(alignment, n);
}

void free(void *p) {
    if ((char *)p >= bootstrap && (char *)p < bootstrap + sizeof(bootstrap)) return;
    if (!real_free) resolve();
    real_free(p);
}
