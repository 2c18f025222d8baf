// TLS over memory BIOs. See copenssl.h for the contract of each function.
#include "copenssl.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <string.h>

struct sf_tls_ctx {
    SSL_CTX *ctx;
    unsigned char alpn[256];
    unsigned alpn_len;
};

struct sf_tls {
    SSL *ssl;
    BIO *in;   // network → OpenSSL
    BIO *out;  // OpenSSL → network
};

// Server-side ALPN: the first of our protocols the client also offers (h2 before http/1.1).
static int select_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned inlen, void *arg) {
    (void)ssl;
    sf_tls_ctx *c = arg;
    for (unsigned i = 0; i < c->alpn_len; i += 1u + c->alpn[i]) {
        for (unsigned j = 0; j < inlen; j += 1u + in[j]) {
            if (c->alpn[i] == in[j] && memcmp(c->alpn + i + 1, in + j + 1, c->alpn[i]) == 0) {
                *out = in + j + 1;
                *outlen = in[j];
                return SSL_TLSEXT_ERR_OK;
            }
        }
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;  // no common protocol (RFC 7301 §3.2)
}

static sf_tls_ctx *ctx_common(const SSL_METHOD *method, const unsigned char *alpn, unsigned alpn_len) {
    if (alpn_len > sizeof(((sf_tls_ctx *)0)->alpn)) return NULL;
    sf_tls_ctx *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->ctx = SSL_CTX_new(method);
    if (!c->ctx) { free(c); return NULL; }
    SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(c->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_RELEASE_BUFFERS);
    memcpy(c->alpn, alpn, alpn_len);
    c->alpn_len = alpn_len;
    return c;
}

sf_tls_ctx *sf_tls_server_ctx(const char *cert_path, const char *key_path, const unsigned char *alpn, unsigned alpn_len) {
    sf_tls_ctx *c = ctx_common(TLS_server_method(), alpn, alpn_len);
    if (!c) return NULL;
    if (SSL_CTX_use_certificate_chain_file(c->ctx, cert_path) != 1 ||
        SSL_CTX_use_PrivateKey_file(c->ctx, key_path, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(c->ctx) != 1) {
        sf_tls_ctx_free(c);
        return NULL;
    }
    SSL_CTX_set_alpn_select_cb(c->ctx, select_alpn, c);
    return c;
}

sf_tls_ctx *sf_tls_client_ctx(const char *ca_path, const unsigned char *alpn, unsigned alpn_len) {
    sf_tls_ctx *c = ctx_common(TLS_client_method(), alpn, alpn_len);
    if (!c) return NULL;
    if (ca_path) {
        if (SSL_CTX_load_verify_locations(c->ctx, ca_path, NULL) != 1) { sf_tls_ctx_free(c); return NULL; }
        SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(c->ctx, SSL_VERIFY_NONE, NULL);
    }
    if (alpn_len > 0 && SSL_CTX_set_alpn_protos(c->ctx, alpn, alpn_len) != 0) { sf_tls_ctx_free(c); return NULL; }
    return c;
}

void sf_tls_ctx_free(sf_tls_ctx *c) {
    if (!c) return;
    SSL_CTX_free(c->ctx);
    free(c);
}

sf_tls *sf_tls_new(sf_tls_ctx *ctx, int is_server, const char *host) {
    sf_tls *t = calloc(1, sizeof(*t));
    if (!t) return NULL;
    t->ssl = SSL_new(ctx->ctx);
    t->in = BIO_new(BIO_s_mem());
    t->out = BIO_new(BIO_s_mem());
    if (!t->ssl || !t->in || !t->out) {
        SSL_free(t->ssl); BIO_free(t->in); BIO_free(t->out); free(t);
        return NULL;
    }
    // An empty memory BIO reports "retry" instead of EOF, so SSL_read says WANT_READ rather than failing.
    BIO_set_mem_eof_return(t->in, -1);
    BIO_set_mem_eof_return(t->out, -1);
    SSL_set_bio(t->ssl, t->in, t->out);  // the SSL owns both BIOs now
    if (is_server) {
        SSL_set_accept_state(t->ssl);
    } else {
        SSL_set_connect_state(t->ssl);
        if (host && *host) {
            SSL_set_tlsext_host_name(t->ssl, host);
            SSL_set1_host(t->ssl, host);
        }
    }
    return t;
}

void sf_tls_free(sf_tls *t) {
    if (!t) return;
    SSL_free(t->ssl);
    free(t);
}

int sf_tls_feed(sf_tls *t, const void *data, int len) { return BIO_write(t->in, data, len); }

int sf_tls_handshake(sf_tls *t) {
    int rc = SSL_do_handshake(t->ssl);
    if (rc == 1) return 1;
    int e = SSL_get_error(t->ssl, rc);
    return (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) ? 0 : -1;
}

int sf_tls_read(sf_tls *t, void *buf, int len) {
    int n = SSL_read(t->ssl, buf, len);
    if (n > 0) return n;
    int e = SSL_get_error(t->ssl, n);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
    if (e == SSL_ERROR_ZERO_RETURN) return -2;
    return -1;
}

int sf_tls_write(sf_tls *t, const void *data, int len) {
    int n = SSL_write(t->ssl, data, len);
    return n > 0 ? n : -1;
}

int sf_tls_pending_output(sf_tls *t) { return (int)BIO_ctrl_pending(t->out); }
int sf_tls_take_output(sf_tls *t, void *buf, int len) { return BIO_read(t->out, buf, len); }
void sf_tls_close(sf_tls *t) { SSL_shutdown(t->ssl); }

int sf_tls_alpn(sf_tls *t, char *out, int len) {
    const unsigned char *p = NULL;
    unsigned n = 0;
    SSL_get0_alpn_selected(t->ssl, &p, &n);
    if (!p || (int)n >= len) { if (len > 0) out[0] = 0; return 0; }
    memcpy(out, p, n);
    out[n] = 0;
    return (int)n;
}

const char *sf_tls_version(sf_tls *t) { return SSL_get_version(t->ssl); }

void sf_tls_last_error(char *out, int len) {
    unsigned long e = ERR_get_error();
    if (e == 0) { if (len > 0) out[0] = 0; }
    else ERR_error_string_n(e, out, (size_t)len);
    ERR_clear_error();
}

int sf_tls_make_self_signed(const char *cert_path, const char *key_path, const char *host) {
    int ok = -1;
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    FILE *kf = NULL, *cf = NULL;
    if (!key || !x) goto done;
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), (long)time(NULL));
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 30L * 24 * 3600);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)host, -1, -1, 0);
    X509_set_issuer_name(x, name);
    char san[300];
    snprintf(san, sizeof(san), "DNS:%s,IP:127.0.0.1", host);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
    if (!ext) goto done;
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    if (!X509_sign(x, key, EVP_sha256())) goto done;
    kf = fopen(key_path, "w");
    cf = fopen(cert_path, "w");
    if (!kf || !cf) goto done;
    if (!PEM_write_PrivateKey(kf, key, NULL, NULL, 0, NULL, NULL) || !PEM_write_X509(cf, x)) goto done;
    ok = 0;
done:
    if (kf) fclose(kf);
    if (cf) fclose(cf);
    X509_free(x);
    EVP_PKEY_free(key);
    return ok;
}
