#ifndef SOULFRA_CCURL_H
#define SOULFRA_CCURL_H
/* A small shim over libcurl for the runtime's OpenAI-compatible backend (the multi interface) and the Docker
   Engine API client (one blocking request over a unix socket): curl_easy_setopt is variadic (Swift cannot call
   it), so each use has a typed wrapper here. */
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sf_curl_multi sf_curl_multi;
typedef struct sf_curl_req sf_curl_req;

/* Body bytes as they arrive; return 1 to take them, 0 to pause the transfer (resume with sf_curl_resume). */
typedef int (*sf_curl_on_data)(void *context, const char *data, size_t len);

int sf_curl_global_init(void);
sf_curl_multi *sf_curl_multi_new(void);
void sf_curl_multi_free(sf_curl_multi *m);

/* Starts a POST of `body` to `url` with the given header lines ("Name: value"); data goes to `on_data`.
   Timeouts in milliseconds (0: none). NULL if curl refused the request. */
sf_curl_req *sf_curl_post(sf_curl_multi *m, const char *url, const char *const *headers, int header_count,
                          const void *body, size_t body_len, long connect_timeout_ms, long total_timeout_ms,
                          sf_curl_on_data on_data, void *context);
/* Aborts a transfer (the connection closes) and frees it. */
void sf_curl_cancel(sf_curl_multi *m, sf_curl_req *r);
void sf_curl_resume(sf_curl_req *r);

/* Runs what is ready without blocking; returns the transfers still running. */
int sf_curl_perform(sf_curl_multi *m);
/* A finished transfer, if any: its context, curl result code, HTTP status and error text (the request is freed
   by the call). 0 when none is finished. */
int sf_curl_next_done(sf_curl_multi *m, void **context, int *result, long *status, char *error, size_t error_len);

/* One blocking request (over a unix socket when `unix_path` is not NULL — the Docker Engine API): `method` on
   `url` with the header lines and an optional body; the answer's body goes to `on_data` (return 0 to stop:
   the transfer then ends with CURLE_WRITE_ERROR). Returns the CURLcode (0: done) and sets the HTTP status;
   `error` says what failed. `timeout_ms` 0: no limit (a follow). */
int sf_curl_easy(const char *unix_path, const char *method, const char *url, const char *const *headers, int header_count,
                 const void *body, size_t body_len, long timeout_ms, sf_curl_on_data on_data, void *context,
                 long *status, char *error, size_t error_len);

#ifdef __cplusplus
}
#endif
#endif
