// LD_PRELOAD shim that counts heap allocations (malloc, calloc, realloc, posix_memalign, aligned_alloc).
// On SIGUSR2 it writes "allocations=<n>" to stderr, so a script can read the count around a load run and
// divide by the frames moved: the broker's hot path should allocate nothing per message.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>
#include <unistd.h>

static _Atomic unsigned long long count;
static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);

// dlsym may call calloc before real_calloc is known: serve that from a small static arena.
static char bootstrap[4096];
static size_t bootstrap_used;

static void report(int sig) {
    (void)sig;
    char buf[64] = "allocations=";
    unsigned long long n = atomic_load(&count);
    char digits[24];
    int k = 0;
    do { digits[k++] = (char)('0' + n % 10); n /= 10; } while (n);
    size_t len = strlen(buf);
    while (k) buf[len++] = digits[--k];
    buf[len++] = '\n';
    write(2, buf, len);
}

__attribute__((constructor)) static void init(void) {
    real_malloc = dlsym(RTLD_NEXT, "malloc");
    real_calloc = dlsym(RTLD_NEXT, "calloc");
    real_realloc = dlsym(RTLD_NEXT, "realloc");
    real_posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
    real_aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
    signal(SIGUSR2, report);
}

void *malloc(size_t n) { atomic_fetch_add(&count, 1); if (!real_malloc) init(); return real_malloc(n); }
void *calloc(size_t a, size_t b) {
    if (!real_calloc) {
        size_t n = (a * b + 15) & ~(size_t)15;
        if (bootstrap_used + n > sizeof(bootstrap)) return NULL;
        void *p = bootstrap + bootstrap_used;
        bootstrap_used += n;
        return p;  // already zero
    }
    atomic_fetch_add(&count, 1);
    return real_calloc(a, b);
}
void *realloc(void *p, size_t n) { atomic_fetch_add(&count, 1); if (!real_realloc) init(); return real_realloc(p, n); }
int posix_memalign(void **p, size_t a, size_t n) { atomic_fetch_add(&count, 1); if (!real_posix_memalign) init(); return real_posix_memalign(p, a, n); }
void *aligned_alloc(size_t a, size_t n) { atomic_fetch_add(&count, 1); if (!real_aligned_alloc) init(); return real_aligned_alloc(a, n); }
