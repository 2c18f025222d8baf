// See copenssl.h for why each function exists.
#include "copenssl.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

void sf_sha256(const void *data, size_t len, unsigned char *out) {
    unsigned int n = 32;
    // EVP_Digest is the one-shot API that works unchanged across OpenSSL 1.1 and 3.x.
    EVP_Digest(data, len, out, &n, EVP_sha256(), NULL);
}

void sf_sha1(const void *data, size_t len, unsigned char *out) {
    unsigned int n = 20;
    EVP_Digest(data, len, out, &n, EVP_sha1(), NULL);
}

int sf_constant_time_equal(const void *a, const void *b, size_t len) {
    return CRYPTO_memcmp(a, b, len) == 0;
}
