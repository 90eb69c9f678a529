/** @file
 * weft_tls: TLS on weft streams, with OpenSSL 3 (the weft_tls library,
 * CMake target weft::tls, pkg-config weft-tls; built when OpenSSL 3 is
 * found). A program that needs no TLS links neither this nor OpenSSL.
 *
 * After a handshake (weft_tls_accept on an accepted stream, weft_tls_connect
 * on a connected one) the same weft_stream_read, the framed reads,
 * weft_stream_write, weft_stream_shutdown and weft_stream_close carry
 * plaintext while the socket carries TLS records, so code written for plain
 * streams works unchanged. The conventions of weft.h hold: loop-bound
 * calls, await points that honour cancellation and deadlines, negative
 * error codes. A write is sealed 16 KiB at a time and each record is sent
 * whole: a cancel or deadline while a long write waits for room stops
 * between records (the records before it are queued, the rest not), so the
 * stream stays usable. weft_stream_shutdown and weft_stream_close send
 * close_notify first (best effort: close's wait for it is cut by cancel or
 * a deadline as for any queued bytes). The peer's close_notify reads as end
 * of stream; so does a peer that closes the socket without one (as most
 * HTTP clients and servers treat it: frame your messages if truncation
 * matters).
 *
 * Errors of TLS itself are WEFT_ETLS (UV_EPROTO, which weft_strerror names
 * "protocol error"): a handshake the peer or this side refused (no shared
 * version or cipher, bytes that are not TLS, a bad record), a certificate
 * that did not verify, a host name that did not match. weft_tls_error()
 * says which, in a sentence, on the thread that got the code.
 */
#ifndef WEFT_TLS_H
#define WEFT_TLS_H

#include "weft.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Every TLS failure (see above); weft_tls_error() gives the reason. */
#define WEFT_ETLS UV_EPROTO

/** A TLS configuration: certificates, keys, what to verify. Shared by any
 * number of streams on any loops; thread-safe once made. */
typedef struct weft_tls_ctx weft_tls_ctx_t;

/** A server context from a PEM certificate chain (the server's certificate
 * first, then its intermediates) and a PEM private key (unencrypted).
 * TLS 1.2 and 1.3; no session tickets. Any thread; never suspends. The
 * caller owns *ctx and frees it with weft_tls_ctx_free. Errors: WEFT_EINVAL
 * (NULL), the file's error (UV_ENOENT, UV_EACCES, ...), WEFT_ETLS (a file
 * that is not a certificate or key, or a key that does not match the
 * certificate), WEFT_ENOMEM. */
WEFT_API int weft_tls_server_ctx(weft_tls_ctx_t **ctx, const char *cert_chain_file,
                                 const char *key_file);

/** A client context that verifies the server's certificate against the
 * PEM certificates in ca_file, or, for NULL, against the system's store
 * (/etc/ssl/certs). TLS 1.2 and 1.3. Any thread; never suspends. The
 * caller owns *ctx. Errors: WEFT_EINVAL (ctx NULL), the file's error
 * (UV_ENOENT, ...), WEFT_ETLS (no certificate in it), WEFT_ENOMEM. */
WEFT_API int weft_tls_client_ctx(weft_tls_ctx_t **ctx, const char *ca_file);

/** Frees ctx (NULL: nothing). Streams that did their handshake with it keep
 * what they need: freeing it does not affect them. Any thread. */
WEFT_API void weft_tls_ctx_free(weft_tls_ctx_t *ctx);

/** The server's handshake on s, an accepted stream of the calling task's
 * loop (await point); ctx is a server context. On success s carries TLS
 * from then on (see above). Errors: WEFT_EINVAL (NULL, a client context,
 * a stream that already has TLS), WEFT_EPERM (another loop's stream),
 * WEFT_EBUSY (another task reads it), WEFT_ENOTASK, WEFT_ECANCELED,
 * WEFT_ETIMEDOUT, WEFT_EOF (the peer closed during the handshake), WEFT_ETLS
 * (the handshake failed: plain text or random bytes instead of a
 * ClientHello, no shared version; the alert, if any, is sent), WEFT_ENOMEM,
 * or the socket's error. After any error the stream is of no further use:
 * close it (weft_stream_close; it sends no close_notify then). */
WEFT_API int weft_tls_accept(weft_stream_t *s, weft_tls_ctx_t *ctx);

/** The client's handshake on s, a connected stream of the calling task's
 * loop (await point); ctx is a client context. hostname is what the
 * server's certificate must name (a DNS name, or an IP address literal,
 * which is checked against the certificate's IP addresses); a name is sent
 * as SNI too. Errors: as weft_tls_accept (WEFT_EINVAL also for hostname
 * NULL or a server context), and WEFT_ETLS when the certificate does not
 * verify against the context's CAs or does not name hostname
 * (weft_tls_error() says which). */
WEFT_API int weft_tls_connect(weft_stream_t *s, weft_tls_ctx_t *ctx, const char *hostname);

/** The protocol version s negotiated ("TLSv1.3", "TLSv1.2"), or NULL when s
 * has no TLS (or is NULL). On the stream's loop, or by whoever holds a
 * detached stream. The string is static. */
WEFT_API const char *weft_tls_version(const weft_stream_t *s);

/** A sentence on the calling thread's last WEFT_ETLS ("certificate verify
 * failed: unable to get local issuer certificate", "hostname mismatch",
 * "wrong version number", ...), or "" if there was none. Valid until the
 * thread's next weft_tls call. Any thread. */
WEFT_API const char *weft_tls_error(void);

#ifdef __cplusplus
}
#endif

#endif /* WEFT_TLS_H */
