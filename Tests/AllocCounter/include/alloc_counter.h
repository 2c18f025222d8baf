#ifndef SOULFRA_ALLOC_COUNTER_H
#define SOULFRA_ALLOC_COUNTER_H

/// Heap allocations made by the calling thread between `alloc_counter_start` and `alloc_counter_stop`
/// (malloc, calloc, realloc, posix_memalign, aligned_alloc: the test binary's own definitions of them,
/// which count and hand over to the C library's). Other threads are never counted.
void alloc_counter_start(void);
unsigned long alloc_counter_stop(void);

#endif
