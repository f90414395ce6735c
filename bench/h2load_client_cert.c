/*
 * LD_PRELOAD shim that gives h2load a TLS client certificate.
 *
 * h2load has no option for one, and every front in the benchmark requires client auth
 * (requireClientAuth / ssl_verify_client on). This wraps SSL_CTX_new: after OpenSSL builds
 * the context, the certificate chain and key named by H2LOAD_CLIENT_CERT and
 * H2LOAD_CLIENT_KEY are loaded into it, so the handshake is an ordinary full mTLS handshake
 * done by h2load's own OpenSSL, with no extra hop to measure or subtract. A load failure
 * aborts rather than silently benchmarking without a certificate.
 *
 * No OpenSSL headers are needed: the few prototypes are declared here and resolved against
 * the libssl that h2load itself loads.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_method_st SSL_METHOD;
#define SHIM_FILETYPE_PEM 1

int SSL_CTX_use_certificate_chain_file(SSL_CTX *ctx, const char *file);
int SSL_CTX_use_PrivateKey_file(SSL_CTX *ctx, const char *file, int type);
int SSL_CTX_check_private_key(const SSL_CTX *ctx);

SSL_CTX *SSL_CTX_new(const SSL_METHOD *method)
{
    static SSL_CTX *(*real_new)(const SSL_METHOD *);
    if (real_new == NULL) {
        *(void **)&real_new = dlsym(RTLD_NEXT, "SSL_CTX_new");
        if (real_new == NULL) {
            fprintf(stderr, "h2load_client_cert: SSL_CTX_new not found\n");
            abort();
        }
    }
    SSL_CTX *ctx = real_new(method);
    const char *cert = getenv("H2LOAD_CLIENT_CERT");
    const char *key = getenv("H2LOAD_CLIENT_KEY");
    if (ctx != NULL && cert != NULL && key != NULL) {
        if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
            SSL_CTX_use_PrivateKey_file(ctx, key, SHIM_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(ctx) != 1) {
            fprintf(stderr, "h2load_client_cert: cannot load %s / %s\n", cert, key);
            abort();
        }
        if (getenv("H2LOAD_CLIENT_CERT_VERBOSE") != NULL)
            fprintf(stderr, "h2load_client_cert: loaded %s\n", cert);
    }
    return ctx;
}
