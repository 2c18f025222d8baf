// See curing.h for why each function exists.
#include "curing.h"

#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>

struct sf_ring {
    struct io_uring ring;
    unsigned flags;
};

struct sf_buf_ring {
    struct io_uring_buf_ring *br;
    unsigned char *buffers;
    unsigned entries;
    unsigned buf_size;
    unsigned mask;
    unsigned pending; // recycled since the last publish
    uint16_t bgid;
    size_t ring_bytes;
};

sf_ring *sf_ring_create(unsigned entries, int *err) {
    sf_ring *r = calloc(1, sizeof(*r));
    if (!r) { *err = -ENOMEM; return NULL; }
    // Ordered by preference: the loop is the only submitter (SINGLE_ISSUER) and reaps on its own thread, so
    // deferred task work (6.1+) avoids interrupting it; older kernels fall back step by step.
    const unsigned attempts[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
        IORING_SETUP_COOP_TASKRUN,
        0,
    };
    int rc = -ENOSYS;
    for (size_t i = 0; i < sizeof(attempts) / sizeof(attempts[0]); i++) {
        struct io_uring_params p;
        memset(&p, 0, sizeof(p));
        p.flags = attempts[i];
        p.cq_entries = entries * 4;
        p.flags |= IORING_SETUP_CQSIZE;
        rc = io_uring_queue_init_params(entries, &r->ring, &p);
        if (rc == 0) { r->flags = attempts[i]; return r; }
        if (rc != -EINVAL) break; // EPERM/ENOSYS/ENOMEM: no point trying weaker flags
    }
    free(r);
    *err = rc;
    return NULL;
}

void sf_ring_destroy(sf_ring *ring) {
    if (!ring) return;
    io_uring_queue_exit(&ring->ring);
    free(ring);
}

unsigned sf_ring_flags(const sf_ring *ring) { return ring->flags; }

int sf_ring_probe_opcode(sf_ring *ring, int opcode) {
    struct io_uring_probe *probe = io_uring_get_probe_ring(&ring->ring);
    if (!probe) return -ENOSYS;
    int ok = io_uring_opcode_supported(probe, opcode);
    io_uring_free_probe(probe);
    return ok ? 1 : 0;
}

int sf_op_accept(void) { return IORING_OP_ACCEPT; }
int sf_op_recv(void) { return IORING_OP_RECV; }
int sf_op_send(void) { return IORING_OP_SEND; }
int sf_op_timeout(void) { return IORING_OP_TIMEOUT; }
int sf_op_read(void) { return IORING_OP_READ; }
int sf_op_write(void) { return IORING_OP_WRITE; }
int sf_op_fsync(void) { return IORING_OP_FSYNC; }
int sf_op_async_cancel(void) { return IORING_OP_ASYNC_CANCEL; }
int sf_op_provide_buffers(void) { return IORING_OP_PROVIDE_BUFFERS; }

// Gets an SQE, or NULL when the submission queue is full. The caller decides what to do then (the loop
// submits what is queued and tries again, or keeps the operation in its backlog): flushing here would hide
// a failed submit from it.
static struct io_uring_sqe *sqe_for(sf_ring *ring) {
    return io_uring_get_sqe(&ring->ring);
}

int sf_prep_multishot_accept(sf_ring *ring, int fd, uint64_t user_data) {
    struct io_uring_sqe *sqe = sqe_for(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_multishot_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int sf_prep_recv_multishot(sf_ring *ring, int fd, uint16_t buf_group, uint64_t user_data) {
    struct io_uring_sqe *sqe = sqe_for(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = buf_group;
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int sf_prep_send(sf_ring *ring, int fd, const void *buf, size_t len, uint64_t user_data) {
    struct io_uring_sqe *sqe = sqe_for(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_send(sqe, fd, buf, len, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int sf_prep_read(sf_ring *ring, int fd, void *buf, unsigned len, uint64_t user_data) {
    struct io_uring_sqe *sqe = sqe_for(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_read(sqe, fd, buf, len, 0);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int sf_prep_read_at(sf_ring *ring, int fd, void *buf, unsigned len, uint64_t offset, uint64_t user_data) {
    struct io_uring_sqe *sqe = sqe_for(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_read(sqe, fd, buf, len, offset);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int sf_prep_write(sf_ring *ring, int fd, const void *buf, unsigned len, uint64_t offset, uint64_t user_data) {
    struct io_uring_sqe *sqe = sqe_for(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_write(sqe, fd, buf, len, offset);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int sf_prep_fsync(sf_ring *ring, int fd, int datasync, uint64_t user_data) {
    struct io_uring_sqe *sqe = sqe_for(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_fsync(sqe, fd, datasync ? IORING_FSYNC_DATASYNC : 0);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int sf_prep_write_fsync(sf_ring *ring, int fd, const void *buf, unsigned len, uint64_t offset, int datasync,
                        uint64_t write_data, uint64_t sync_data) {
    // Both or neither: a linked SQE whose partner is missing would link to whatever comes next.
    if (io_uring_sq_space_left(&ring->ring) < 2) return -EBUSY;
    struct io_uring_sqe *w = sqe_for(ring);
    io_uring_prep_write(w, fd, buf, len, offset);
    io_uring_sqe_set_data64(w, write_data);
    w->flags |= IOSQE_IO_LINK;
    struct io_uring_sqe *f = sqe_for(ring);
    io_uring_prep_fsync(f, fd, datasync ? IORING_FSYNC_DATASYNC : 0);
    io_uring_sqe_set_data64(f, sync_data);
    return 0;
}

/* A relative timeout. The kernel reads the timespec when the SQE is consumed at submit time, not when it was
   prepared, so it must outlive this call: each kind of timer keeps its own (one of each is in flight at a time). */
static int prep_timeout(sf_ring *ring, struct __kernel_timespec *ts, uint64_t nanoseconds, uint64_t user_data) {
    struct io_uring_sqe *sqe = sqe_for(ring);
    if (!sqe) return -EBUSY;
    ts->tv_sec = (long long)(nanoseconds / 1000000000ull);
    ts->tv_nsec = (long long)(nanoseconds % 1000000000ull);
    io_uring_prep_timeout(sqe, ts, 0, 0);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int sf_prep_alarm(sf_ring *ring, uint64_t nanoseconds, uint64_t user_data) {
    static __thread struct __kernel_timespec ts;
    return prep_timeout(ring, &ts, nanoseconds, user_data);
}

int sf_prep_timeout(sf_ring *ring, uint64_t nanoseconds, uint64_t user_data) {
    static __thread struct __kernel_timespec ts;
    return prep_timeout(ring, &ts, nanoseconds, user_data);
}

int sf_prep_cancel(sf_ring *ring, uint64_t target, uint64_t user_data) {
    struct io_uring_sqe *sqe = sqe_for(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_cancel64(sqe, target, 0);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int sf_prep_close(sf_ring *ring, int fd, uint64_t user_data) {
    struct io_uring_sqe *sqe = sqe_for(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_close(sqe, fd);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int sf_prep_openat(sf_ring *ring, const char *path, int flags, unsigned mode, uint64_t user_data) {
    struct io_uring_sqe *sqe = sqe_for(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_openat(sqe, AT_FDCWD, path, flags, mode);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int sf_prep_mkdirat(sf_ring *ring, const char *path, unsigned mode, uint64_t user_data) {
    struct io_uring_sqe *sqe = sqe_for(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_mkdirat(sqe, AT_FDCWD, path, mode);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int sf_prep_unlinkat(sf_ring *ring, const char *path, uint64_t user_data) {
    struct io_uring_sqe *sqe = sqe_for(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_unlinkat(sqe, AT_FDCWD, path, 0);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int sf_submit(sf_ring *ring) {
    return io_uring_submit(&ring->ring);
}

unsigned sf_sq_space(sf_ring *ring) {
    return io_uring_sq_space_left(&ring->ring);
}

int sf_submit_and_wait(sf_ring *ring, unsigned wait_nr) {
    return io_uring_submit_and_wait(&ring->ring, wait_nr);
}

unsigned sf_reap(sf_ring *ring, sf_cqe *out, unsigned max) {
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(&ring->ring, head, cqe) {
        if (n == max) break;
        out[n].user_data = cqe->user_data;
        out[n].res = cqe->res;
        out[n].flags = cqe->flags;
        n++;
    }
    io_uring_cq_advance(&ring->ring, n);
    return n;
}

sf_buf_ring *sf_buf_ring_create(sf_ring *ring, unsigned entries, unsigned buf_size, uint16_t bgid, int *err) {
    if (entries == 0 || (entries & (entries - 1)) != 0 || entries > 32768) { *err = -EINVAL; return NULL; }
    sf_buf_ring *b = calloc(1, sizeof(*b));
    if (!b) { *err = -ENOMEM; return NULL; }
    b->ring_bytes = entries * sizeof(struct io_uring_buf);
    // The ring itself must be page aligned; mmap gives that.
    void *mem = mmap(NULL, b->ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (mem == MAP_FAILED) { free(b); *err = -errno; return NULL; }
    b->buffers = NULL;
    if (posix_memalign((void **)&b->buffers, 4096, (size_t)entries * buf_size) != 0) {
        munmap(mem, b->ring_bytes); free(b); *err = -ENOMEM; return NULL;
    }
    b->br = mem;
    b->entries = entries;
    b->buf_size = buf_size;
    b->mask = (unsigned)io_uring_buf_ring_mask(entries);
    b->bgid = bgid;
    io_uring_buf_ring_init(b->br);
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (unsigned long)(uintptr_t)mem;
    reg.ring_entries = entries;
    reg.bgid = bgid;
    int rc = io_uring_register_buf_ring(&ring->ring, &reg, 0);
    if (rc != 0) {
        free(b->buffers); munmap(mem, b->ring_bytes); free(b); *err = rc; return NULL;
    }
    for (unsigned i = 0; i < entries; i++) {
        io_uring_buf_ring_add(b->br, b->buffers + (size_t)i * buf_size, buf_size, (unsigned short)i, (int)b->mask, (int)i);
    }
    io_uring_buf_ring_advance(b->br, (int)entries);
    return b;
}

void sf_buf_ring_destroy(sf_ring *ring, sf_buf_ring *b) {
    if (!b) return;
    io_uring_unregister_buf_ring(&ring->ring, b->bgid);
    munmap(b->br, b->ring_bytes);
    free(b->buffers);
    free(b);
}

void *sf_buf_ring_buffer(sf_buf_ring *b, uint16_t bid) {
    return b->buffers + (size_t)bid * b->buf_size;
}

void sf_buf_ring_recycle(sf_buf_ring *b, uint16_t bid) {
    io_uring_buf_ring_add(b->br, b->buffers + (size_t)bid * b->buf_size, b->buf_size, bid, (int)b->mask, (int)b->pending);
    b->pending++;
}

void sf_buf_ring_publish(sf_buf_ring *b) {
    if (b->pending == 0) return;
    io_uring_buf_ring_advance(b->br, (int)b->pending);
    b->pending = 0;
}

int sf_cqe_has_more(uint32_t flags) { return (flags & IORING_CQE_F_MORE) != 0; }
int sf_cqe_has_buffer(uint32_t flags) { return (flags & IORING_CQE_F_BUFFER) != 0; }
uint16_t sf_cqe_buffer_id(uint32_t flags) { return (uint16_t)(flags >> IORING_CQE_BUFFER_SHIFT); }

int sf_eventfd(void) {
    int fd = eventfd(0, EFD_CLOEXEC);
    return fd >= 0 ? fd : -errno;
}
