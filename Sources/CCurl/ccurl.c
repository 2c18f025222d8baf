// See ccurl.h.
#include "ccurl.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sf_curl_multi { CURLM *multi; };

struct sf_curl_req {
    CURL *easy;
    struct curl_slist *headers;
    char *body;
    sf_curl_on_data on_data;
    void *context;
    char error[CURL_ERROR_SIZE];
};

int sf_curl_global_init(void) { return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1; }

sf_curl_multi *sf_curl_multi_new(void) {
    sf_curl_multi *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->multi = curl_multi_init();
    if (!m->multi) { free(m); return NULL; }
    return m;
}

void sf_curl_multi_free(sf_curl_multi *m) {
    if (!m) return;
    curl_multi_cleanup(m->multi);
    free(m);
}

static size_t write_cb(char *data, size_t size, size_t n, void *userdata) {
    sf_curl_req *r = userdata;
    return r->on_data(r->context, data, size * n) ? size * n : CURL_WRITEFUNC_PAUSE;
}

static void free_req(sf_curl_req *r) {
    curl_easy_cleanup(r->easy);
    curl_slist_free_all(r->headers);
    free(r->body);
    free(r);
}

sf_curl_req *sf_curl_post(sf_curl_multi *m, const char *url, const char *const *headers, int header_count,
                          const void *body, size_t body_len, long connect_timeout_ms, long total_timeout_ms,
                          sf_curl_on_data on_data, void *context) {
    sf_curl_req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->easy = curl_easy_init();
    r->body = malloc(body_len ? body_len : 1);
    if (!r->easy || !r->body) { if (r->easy) curl_easy_cleanup(r->easy); free(r->body); free(r); return NULL; }
    memcpy(r->body, body, body_len);
    for (int i = 0; i < header_count; i++) r->headers = curl_slist_append(r->headers, headers[i]);
    r->on_data = on_data;
    r->context = context;
    CURL *e = r->easy;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)body_len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->error);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    if (connect_timeout_ms > 0) curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, connect_timeout_ms);
    if (total_timeout_ms > 0) curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, total_timeout_ms);
    if (curl_multi_add_handle(m->multi, e) != CURLM_OK) { free_req(r); return NULL; }
    return r;
}

void sf_curl_cancel(sf_curl_multi *m, sf_curl_req *r) {
    if (!r) return;
    curl_multi_remove_handle(m->multi, r->easy);
    free_req(r);
}

void sf_curl_resume(sf_curl_req *r) { curl_easy_pause(r->easy, CURLPAUSE_CONT); }

int sf_curl_perform(sf_curl_multi *m) {
    int running = 0;
    curl_multi_perform(m->multi, &running);
    return running;
}

int sf_curl_next_done(sf_curl_multi *m, void **context, int *result, long *status, char *error, size_t error_len) {
    int left = 0;
    CURLMsg *msg;
    while ((msg = curl_multi_info_read(m->multi, &left))) {
        if (msg->msg != CURLMSG_DONE) continue;
        sf_curl_req *r = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        *context = r->context;
        *result = (int)msg->data.result;
        *status = 0;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, status);
        const char *text = r->error[0] ? r->error : curl_easy_strerror(msg->data.result);
        if (error_len) { strncpy(error, text, error_len - 1); error[error_len - 1] = 0; }
        curl_multi_remove_handle(m->multi, r->easy);
        free_req(r);
        return 1;
    }
    return 0;
}

struct easy_sink { sf_curl_on_data on_data; void *context; };

static size_t easy_write_cb(char *data, size_t size, size_t n, void *userdata) {
    struct easy_sink *s = userdata;
    return s->on_data(s->context, data, size * n) ? size * n : 0;  /* 0: stop the transfer */
}

int sf_curl_easy(const char *unix_path, const char *method, const char *url, const char *const *headers, int header_count,
                 const void *body, size_t body_len, long timeout_ms, sf_curl_on_data on_data, void *context,
                 long *status, char *error, size_t error_len) {
    CURL *e = curl_easy_init();
    if (!e) { snprintf(error, error_len, "curl_easy_init failed"); return -1; }
    char errbuf[CURL_ERROR_SIZE] = {0};
    struct curl_slist *list = NULL;
    for (int i = 0; i < header_count; i++) list = curl_slist_append(list, headers[i]);
    struct easy_sink sink = { on_data, context };
    if (unix_path) curl_easy_setopt(e, CURLOPT_UNIX_SOCKET_PATH, unix_path);
    else curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");  /* outbound calls (webhooks): never file:, ftp: … */
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, list);
    if (body) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    }
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, easy_write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &sink);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    if (timeout_ms > 0) curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
    CURLcode rc = curl_easy_perform(e);
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, status);
    if (rc != CURLE_OK) snprintf(error, error_len, "%s", errbuf[0] ? errbuf : curl_easy_strerror(rc));
    curl_slist_free_all(list);
    curl_easy_cleanup(e);
    return (int)rc;
}
