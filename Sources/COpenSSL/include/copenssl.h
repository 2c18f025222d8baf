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

/// 1 if the `len` bytes at `a` and `b` are equal, compared in time that does not depend on where they differ
/// (CRYPTO_memcmp), else 0.
int sf_constant_time_equal(const void *a, const void *b, size_t len);

#ifdef __cplusplus
}
#endif
#endif
