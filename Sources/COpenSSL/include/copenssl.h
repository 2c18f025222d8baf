// The C shim between Soulfra and OpenSSL's libcrypto (libssl joins with the TLS gateway).
//
// Why a shim: Swift cannot call OpenSSL's function-like macros, and keeping every OpenSSL call behind a few
// plain functions confines version differences (Debian 12 ships OpenSSL 3.0) to one file.
#ifndef SOULFRA_COPENSSL_H
#define SOULFRA_COPENSSL_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/// SHA-256 of `len` bytes into `out` (32 bytes). Used so secrets are kept only as digests.
void sf_sha256(const void *data, size_t len, unsigned char *out);

/// SHA-1 of `len` bytes into `out` (20 bytes). Only for the WebSocket handshake (RFC 6455 §4.2.2), where the
/// protocol fixes the hash; never for secrets.
void sf_sha1(const void *data, size_t len, unsigned char *out);

/// 1 if the `len` bytes at `a` and `b` are equal, compared in time that does not depend on where they differ
/// (CRYPTO_memcmp), else 0.
int sf_constant_time_equal(const void *a, const void *b, size_t len);

#ifdef __cplusplus
}
#endif
#endif

#ifndef SOULFRA_COPENSSL_TLS_H
#define SOULFRA_COPENSSL_TLS_H
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#endif

// TLS over memory BIOs: the loop moves ciphertext, OpenSSL never touches a socket.

/// An SSL_CTX (opaque to Swift).
typedef struct sf_tls_ctx sf_tls_ctx;
/// One connection's SSL with its two memory BIOs (opaque to Swift).
typedef struct sf_tls sf_tls;

/// A server context: TLS 1.2 and 1.3, the PEM certificate chain and key, ALPN choosing the first of the
/// server's `alpn` (wire format: length-prefixed names) that the client offers. NULL on error (see sf_tls_last_error).
sf_tls_ctx *sf_tls_server_ctx(const char *cert_path, const char *key_path, const unsigned char *alpn, unsigned alpn_len);
/// A client context offering `alpn`; with `ca_path` the server certificate is verified against it (and the
/// host name given to sf_tls_new), without it it is not verified (loopback tests and load drivers only).
sf_tls_ctx *sf_tls_client_ctx(const char *ca_path, const unsigned char *alpn, unsigned alpn_len);
void sf_tls_ctx_free(sf_tls_ctx *ctx);

sf_tls *sf_tls_new(sf_tls_ctx *ctx, int is_server, const char *host);
void sf_tls_free(sf_tls *t);
/// Hands ciphertext from the network to OpenSSL. Returns bytes taken or -1.
int sf_tls_feed(sf_tls *t, const void *data, int len);
/// Drives the handshake: 1 done, 0 needs more input (drain output first), -1 failed.
int sf_tls_handshake(sf_tls *t);
/// Decrypted bytes into buf: >0 bytes, 0 needs more input, -1 failed, -2 the peer sent close_notify.
int sf_tls_read(sf_tls *t, void *buf, int len);
/// Encrypts plaintext: bytes taken, or -1.
int sf_tls_write(sf_tls *t, const void *data, int len);
/// Ciphertext waiting for the network, and taking it.
int sf_tls_pending_output(sf_tls *t);
int sf_tls_take_output(sf_tls *t, void *buf, int len);
/// Sends close_notify.
void sf_tls_close(sf_tls *t);
/// The negotiated ALPN protocol into out (NUL-terminated); its length, 0 if none.
int sf_tls_alpn(sf_tls *t, char *out, int len);
/// The negotiated protocol version name ("TLSv1.3").
const char *sf_tls_version(sf_tls *t);
/// The last OpenSSL error as text (thread-local queue), "" if none; clears the queue.
void sf_tls_last_error(char *out, int len);
/// Writes a fresh self-signed P-256 certificate (valid 30 days, CN and subjectAltName DNS:`host` and
/// IP:127.0.0.1) and its key as PEM files. 0 on success.
int sf_tls_make_self_signed(const char *cert_path, const char *key_path, const char *host);

/* AES-256-GCM with a 12-byte IV: seals `len` bytes of `in` into `out` (the same length) and writes the 16-byte
   tag; opens them back, checking the tag (and the AAD). 0 on success, -1 on failure (for `open`: the bytes or
   the AAD are not what was sealed). The vault encrypts worlds' events at rest with them. */
int sf_aes256gcm_seal(const unsigned char *key, const unsigned char *iv, const void *aad, size_t aad_len,
                      const void *in, size_t len, unsigned char *out, unsigned char *tag);
int sf_aes256gcm_open(const unsigned char *key, const unsigned char *iv, const void *aad, size_t aad_len,
                      const void *in, size_t len, const unsigned char *tag, unsigned char *out);
/* `len` bytes from OpenSSL's CSPRNG; 0 on success. */
int sf_random_bytes(unsigned char *out, int len);

#ifdef __cplusplus
}
#endif

#endif
