// The C shim between Soulfra's gateway and libnghttp2.
//
// Why a shim: Debian 12 ships nghttp2 1.52, whose mem_recv/mem_send/read-callback API uses ssize_t (1.61
// added *2 variants with nghttp2_ssize); these wrappers give Swift one signature whatever the version, and
// set up a session the way the gateway always wants it (no automatic WINDOW_UPDATE: the gateway consumes a
// stream's DATA only after the broker accepted it, which is how backpressure crosses the proxy).
#ifndef SOULFRA_CNGHTTP2_H
#define SOULFRA_CNGHTTP2_H

#include <nghttp2/nghttp2.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Creates a server (is_server = 1) or client session with automatic WINDOW_UPDATE off and the peer's
/// max-reserved-remote-streams and header-list bounds applied. Returns 0 or an nghttp2 error code.
int sf_h2_session_new(nghttp2_session **out, const nghttp2_session_callbacks *callbacks, void *user_data,
                      int is_server, uint32_t max_header_list_bytes);

/// nghttp2_session_mem_recv with a fixed-width result: bytes processed, or a negative nghttp2 error code.
int64_t sf_h2_mem_recv(nghttp2_session *session, const uint8_t *data, size_t len);

/// nghttp2_session_mem_send: sets *data to nghttp2's internal buffer (valid until the next call) and returns
/// its length (0: nothing to send), or a negative nghttp2 error code.
int64_t sf_h2_mem_send(nghttp2_session *session, const uint8_t **data);

/// The data-source read callback's signature without ssize_t: return bytes written to buf, 0 with EOF in
/// *flags, NGHTTP2_ERR_DEFERRED, or another negative nghttp2 error code.
typedef int64_t (*sf_h2_read_fn)(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                                 uint32_t *flags, void *user_data);

/// Submits a response whose body is pulled through `read` (which may defer until data arrives).
int sf_h2_submit_response(nghttp2_session *session, int32_t stream_id, const nghttp2_nv *nva, size_t nvlen,
                          sf_h2_read_fn read);

/// Submits a request (client sessions, tests and the load driver) whose body is pulled through `read`
/// (NULL: no body). Returns the stream id or a negative nghttp2 error code.
int32_t sf_h2_submit_request(nghttp2_session *session, const nghttp2_nv *nva, size_t nvlen, sf_h2_read_fn read);

/// Whether n bytes at a and b are equal (memcmp). Here so that the sans-IO session in Swift compares header
/// names and values in nghttp2's callbacks without importing the C library wholesale.
static inline int sf_bytes_equal(const void *a, const void *b, size_t n) { return memcmp(a, b, n) == 0; }

#ifdef __cplusplus
}
#endif
#endif
