// See copenssl.h for why each function exists.
#include "copenssl.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

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

int sf_aes256gcm_seal(const unsigned char *key, const unsigned char *iv, const void *aad, size_t aad_len,
                      const void *in, size_t len, unsigned char *out, unsigned char *tag) {
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (!ctx) return -1;
    int n = 0, ok = EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1
        && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) == 1
        && EVP_EncryptInit_ex(ctx, NULL, NULL, key, iv) == 1
        && (aad_len == 0 || EVP_EncryptUpdate(ctx, NULL, &n, aad, (int)aad_len) == 1)
        && (len == 0 || EVP_EncryptUpdate(ctx, out, &n, in, (int)len) == 1)
        && EVP_EncryptFinal_ex(ctx, out + (len == 0 ? 0 : n), &n) == 1
        && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1;
    EVP_CIPHER_CTX_free(ctx);
    return ok ? 0 : -1;
}

int sf_aes256gcm_open(const unsigned char *key, const unsigned char *iv, const void *aad, size_t aad_len,
                      const void *in, size_t len, const unsigned char *tag, unsigned char *out) {
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (!ctx) return -1;
    int n = 0, ok = EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1
        && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) == 1
        && EVP_DecryptInit_ex(ctx, NULL, NULL, key, iv) == 1
        && (aad_len == 0 || EVP_DecryptUpdate(ctx, NULL, &n, aad, (int)aad_len) == 1)
        && (len == 0 || EVP_DecryptUpdate(ctx, out, &n, in, (int)len) == 1)
        && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, (void *)tag) == 1
        && EVP_DecryptFinal_ex(ctx, out + (len == 0 ? 0 : n), &n) == 1;
    EVP_CIPHER_CTX_free(ctx);
    return ok ? 0 : -1;
}

int sf_random_bytes(unsigned char *out, int len) {
    return RAND_bytes(out, len) == 1 ? 0 : -1;
}
