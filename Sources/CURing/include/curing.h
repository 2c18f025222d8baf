// The C shim between Soulfra's event loop and liburing.
//
// Why a shim: liburing's prep helpers are static inline and take `struct io_uring *`, whose layout Swift
// would otherwise copy around by value; and Debian 12 ships liburing 2.3, which lacks
// io_uring_setup_buf_ring (2.4+), so the provided-buffer ring is mapped and registered here by hand.
// Every function below hides one of those gaps; none of them holds state of its own.
#ifndef SOULFRA_CURING_H
#define SOULFRA_CURING_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/// An opaque io_uring instance (wraps `struct io_uring`).
typedef struct sf_ring sf_ring;

/// One completion, copied out of the CQ so Swift never touches ring memory.
typedef struct sf_cqe {
    uint64_t user_data;
    int32_t res;
    uint32_t flags;
} sf_cqe;

/// A provided-buffer ring registered with a ring (IORING_REGISTER_PBUF_RING, kernel 5.19+).
typedef struct sf_buf_ring sf_buf_ring;

/// Creates a ring with `entries` SQEs. Tries SINGLE_ISSUER|DEFER_TASKRUN (6.1+), then COOP_TASKRUN, then no
/// flags. Returns NULL and sets *err to a negative errno on failure.
sf_ring *sf_ring_create(unsigned entries, int *err);
void sf_ring_destroy(sf_ring *ring);
/// The setup flags the ring was created with (for the start-up report).
unsigned sf_ring_flags(const sf_ring *ring);

/// Reports whether the kernel supports `opcode` on this ring (IORING_REGISTER_PROBE). 1 yes, 0 no, <0 errno.
int sf_ring_probe_opcode(sf_ring *ring, int opcode);

// Opcodes the loop needs, re-exported so Swift can name them in the start-up probe.
int sf_op_accept(void);
int sf_op_recv(void);
int sf_op_send(void);
int sf_op_timeout(void);
int sf_op_read(void);
int sf_op_write(void);
int sf_op_fsync(void);
int sf_op_async_cancel(void);
int sf_op_provide_buffers(void);

// SQE preparation. Each returns 0, or -EBUSY when the submission queue is full (nothing is prepared then;
// submit with sf_submit and try again).
int sf_prep_multishot_accept(sf_ring *ring, int fd, uint64_t user_data);
int sf_prep_recv_multishot(sf_ring *ring, int fd, uint16_t buf_group, uint64_t user_data);
int sf_prep_send(sf_ring *ring, int fd, const void *buf, size_t len, uint64_t user_data);
int sf_prep_read(sf_ring *ring, int fd, void *buf, unsigned len, uint64_t user_data);
/* A read of `len` bytes at `offset` of a file (pread semantics). */
int sf_prep_read_at(sf_ring *ring, int fd, void *buf, unsigned len, uint64_t offset, uint64_t user_data);
/// Writes `len` bytes of `buf` at `offset` in the file (IORING_OP_WRITE; pwrite semantics, short writes possible).
int sf_prep_write(sf_ring *ring, int fd, const void *buf, unsigned len, uint64_t offset, uint64_t user_data);
/// fsync(2), or fdatasync(2) with `datasync` (IORING_OP_FSYNC with IORING_FSYNC_DATASYNC).
int sf_prep_fsync(sf_ring *ring, int fd, int datasync, uint64_t user_data);
/// A write and an fsync linked behind it (IOSQE_IO_LINK): the fsync starts only once the write completed in
/// full, and completes with -ECANCELED if the write failed or was short. Both SQEs or neither (-EBUSY).
int sf_prep_write_fsync(sf_ring *ring, int fd, const void *buf, unsigned len, uint64_t offset, int datasync,
                        uint64_t write_data, uint64_t sync_data);
/// A relative timeout of `nanoseconds` that completes with -ETIME.
/* A one-shot wake-up after `nanoseconds` (one in flight per ring; the tick has its own). */
int sf_prep_alarm(sf_ring *ring, uint64_t nanoseconds, uint64_t user_data);
int sf_prep_timeout(sf_ring *ring, uint64_t nanoseconds, uint64_t user_data);
/// Cancels every request whose user_data equals `target`.
int sf_prep_cancel(sf_ring *ring, uint64_t target, uint64_t user_data);
/// Closes `fd` through the ring, so the close is ordered after work already queued for it.
int sf_prep_close(sf_ring *ring, int fd, uint64_t user_data);

/// Opens `path` (IORING_OP_OPENAT, relative to the working directory); completes with the new descriptor.
int sf_prep_openat(sf_ring *ring, const char *path, int flags, unsigned mode, uint64_t user_data);
/// Makes the directory `path` (IORING_OP_MKDIRAT).
int sf_prep_mkdirat(sf_ring *ring, const char *path, unsigned mode, uint64_t user_data);
/// Removes the file `path` (IORING_OP_UNLINKAT).
int sf_prep_unlinkat(sf_ring *ring, const char *path, uint64_t user_data);

/// Submits queued SQEs without waiting (to make room in a full submission queue). Returns the count or -errno.
int sf_submit(sf_ring *ring);
/// Free entries in the submission queue.
unsigned sf_sq_space(sf_ring *ring);
/// Submits queued SQEs and waits for at least `wait_nr` completions. Returns submitted count or -errno.
int sf_submit_and_wait(sf_ring *ring, unsigned wait_nr);
/// Copies up to `max` completions into `out` and marks them seen. Returns how many.
unsigned sf_reap(sf_ring *ring, sf_cqe *out, unsigned max);

/// Maps and registers `entries` buffers of `buf_size` bytes each under group `bgid` and hands all of them to
/// the kernel. `entries` must be a power of two. Returns NULL and sets *err on failure.
sf_buf_ring *sf_buf_ring_create(sf_ring *ring, unsigned entries, unsigned buf_size, uint16_t bgid, int *err);
void sf_buf_ring_destroy(sf_ring *ring, sf_buf_ring *br);
/// The address of buffer `bid`.
void *sf_buf_ring_buffer(sf_buf_ring *br, uint16_t bid);
/// Gives buffer `bid` back to the kernel; batched until sf_buf_ring_publish.
void sf_buf_ring_recycle(sf_buf_ring *br, uint16_t bid);
/// Makes recycled buffers visible to the kernel (one release store).
void sf_buf_ring_publish(sf_buf_ring *br);

/// An eventfd (close-on-exec, blocking) for waking a loop from other threads; -errno on failure.
int sf_eventfd(void);

// CQE flag helpers (liburing 2.3 names differ across versions).
int sf_cqe_has_more(uint32_t flags);
int sf_cqe_has_buffer(uint32_t flags);
uint16_t sf_cqe_buffer_id(uint32_t flags);

#ifdef __cplusplus
}
#endif
#endif
