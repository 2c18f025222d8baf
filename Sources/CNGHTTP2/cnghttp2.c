// See cnghttp2.h for why each function exists.
#include "cnghttp2.h"

#include <stddef.h>

int sf_h2_session_new(nghttp2_session **out, const nghttp2_session_callbacks *callbacks, void *user_data,
                      int is_server, uint32_t max_header_list_bytes) {
    nghttp2_option *opt;
    int rc = nghttp2_option_new(&opt);
    if (rc != 0) return rc;
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_max_send_header_block_length(opt, max_header_list_bytes);
    rc = is_server ? nghttp2_session_server_new2(out, callbacks, user_data, opt)
                   : nghttp2_session_client_new2(out, callbacks, user_data, opt);
    nghttp2_option_del(opt);
    return rc;
}

int64_t sf_h2_mem_recv(nghttp2_session *session, const uint8_t *data, size_t len) {
    return (int64_t)nghttp2_session_mem_recv(session, data, len);
}

int64_t sf_h2_mem_send(nghttp2_session *session, const uint8_t **data) {
    return (int64_t)nghttp2_session_mem_send(session, data);
}

// nghttp2 1.52 wants a ssize_t callback; this trampoline adapts the fixed-width one kept in source.ptr.
static ssize_t read_trampoline(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                               uint32_t *flags, nghttp2_data_source *source, void *user_data) {
    sf_h2_read_fn fn = (sf_h2_read_fn)source->ptr;
    return (ssize_t)fn(session, stream_id, buf, length, flags, user_data);
}

int sf_h2_submit_response(nghttp2_session *session, int32_t stream_id, const nghttp2_nv *nva, size_t nvlen,
                          sf_h2_read_fn read) {
    if (!read) return nghttp2_submit_response(session, stream_id, nva, nvlen, NULL);
    nghttp2_data_provider dp;
    dp.source.ptr = (void *)read;
    dp.read_callback = read_trampoline;
    return nghttp2_submit_response(session, stream_id, nva, nvlen, &dp);
}

int32_t sf_h2_submit_request(nghttp2_session *session, const nghttp2_nv *nva, size_t nvlen, sf_h2_read_fn read) {
    if (!read) return nghttp2_submit_request(session, NULL, nva, nvlen, NULL, NULL);
    nghttp2_data_provider dp;
    dp.source.ptr = (void *)read;
    dp.read_callback = read_trampoline;
    return nghttp2_submit_request(session, NULL, nva, nvlen, &dp, NULL);
}
