/* TLS on weft streams, with OpenSSL 3: its own library (weft_tls), so
 * that weft itself never links OpenSSL.
 *
 * The handshake runs over the plain stream: SSL_do_handshake talks to two
 * memory BIOs, and this file carries their bytes with weft_stream_read and
 * weft_stream_write, so the handshake's waits are ordinary await points
 * (cancel, deadlines). Once it is done, the SSL object becomes the
 * stream's filter (internal.h's weft__filter_ops_t): stream.c feeds it
 * what the socket reads into the read BIO and asks SSL_read for plaintext
 * to fill its read-ahead buffer, and each write is sealed with SSL_write
 * into the write BIO, whose bytes go to stream.c's stage or write queue
 * whole. So weft's read-ahead and write staging keep their one read and
 * one write system call per burst. */
#include "internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "weft_tls.h"

struct weft_tls_ctx {
  SSL_CTX *ssl_ctx;
  bool server;
};

/* One stream's TLS: the SSL object, which owns both BIOs. */
typedef struct tls_conn {
  SSL *ssl;
  BIO *rbio;     /* what the socket read, for SSL */
  BIO *wbio;     /* what SSL wrote, for the socket */
  bool notified; /* close_notify was sent */
} tls_conn_t;

static _Thread_local char last_error[256];

/* Records the reason of a TLS failure for weft_tls_error, and empties
 * OpenSSL's error queue (per thread). */
static int tls_fail(SSL *ssl, const char *what) {
  unsigned long e = ERR_peek_last_error();
  long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
  if (ssl && vr != X509_V_OK)
    snprintf(last_error, sizeof last_error, "%s: certificate verify failed: %s", what,
             X509_verify_cert_error_string(vr));
  else if (e)
    snprintf(last_error, sizeof last_error, "%s: %s", what, ERR_reason_error_string(e)
             ? ERR_reason_error_string(e) : "unknown OpenSSL error");
  else
    snprintf(last_error, sizeof last_error, "%s failed", what);
  ERR_clear_error();
  return WEFT_ETLS;
}

const char *weft_tls_error(void) {
  return last_error;
}

/* ----------------------------------------------------------- contexts */

/* Whether path can be read: 0 or its error, so a missing file is
 * UV_ENOENT rather than an OpenSSL reason. */
static int readable(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f)
    return -errno;
  fclose(f);
  return 0;
}

static int ctx_new(weft_tls_ctx_t **out, bool server) {
  weft_tls_ctx_t *c = calloc(1, sizeof *c);
  if (!c)
    return WEFT_ENOMEM;
  c->ssl_ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (!c->ssl_ctx) {
    free(c);
    ERR_clear_error();
    return WEFT_ENOMEM;
  }
  c->server = server;
  SSL_CTX_set_min_proto_version(c->ssl_ctx, TLS1_2_VERSION);
  /* Records go out as soon as they are sealed; SSL_write of a whole chunk
   * always completes on a memory BIO. */
  SSL_CTX_set_mode(c->ssl_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_RELEASE_BUFFERS);
  *out = c;
  return 0;
}

int weft_tls_server_ctx(weft_tls_ctx_t **ctx, const char *cert_chain_file,
                        const char *key_file) {
  if (!ctx)
    return WEFT_EINVAL;
  *ctx = NULL;
  if (!cert_chain_file || !key_file)
    return WEFT_EINVAL;
  int err;
  if ((err = readable(cert_chain_file)) != 0 || (err = readable(key_file)) != 0)
    return err;
  weft_tls_ctx_t *c;
  if ((err = ctx_new(&c, true)) != 0)
    return err;
  ERR_clear_error();
  /* No resumption is offered, so tickets would only cost a round's bytes
   * and a close that races them. */
  SSL_CTX_set_num_tickets(c->ssl_ctx, 0);
  if (SSL_CTX_use_certificate_chain_file(c->ssl_ctx, cert_chain_file) != 1) {
    err = tls_fail(NULL, "certificate chain");
    goto error;
  }
  if (SSL_CTX_use_PrivateKey_file(c->ssl_ctx, key_file, SSL_FILETYPE_PEM) != 1) {
    err = tls_fail(NULL, "private key");
    goto error;
  }
  if (SSL_CTX_check_private_key(c->ssl_ctx) != 1) {
    err = tls_fail(NULL, "private key");
    goto error;
  }
  *ctx = c;
  return 0;
error:
  weft_tls_ctx_free(c);
  return err;
}

int weft_tls_client_ctx(weft_tls_ctx_t **ctx, const char *ca_file) {
  if (!ctx)
    return WEFT_EINVAL;
  *ctx = NULL;
  int err;
  if (ca_file && (err = readable(ca_file)) != 0)
    return err;
  weft_tls_ctx_t *c;
  if ((err = ctx_new(&c, false)) != 0)
    return err;
  ERR_clear_error();
  SSL_CTX_set_verify(c->ssl_ctx, SSL_VERIFY_PEER, NULL);
  int ok = ca_file ? SSL_CTX_load_verify_locations(c->ssl_ctx, ca_file, NULL)
                   : SSL_CTX_set_default_verify_paths(c->ssl_ctx);
  if (ok != 1) {
    err = tls_fail(NULL, "CA certificates");
    weft_tls_ctx_free(c);
    return err;
  }
  *ctx = c;
  return 0;
}

void weft_tls_ctx_free(weft_tls_ctx_t *ctx) {
  if (!ctx)
    return;
  SSL_CTX_free(ctx->ssl_ctx); /* each SSL holds a reference of its own */
  free(ctx);
}

/* ------------------------------------------------------------- filter */

/* Sends what SSL wrote into the write BIO (below the filter) and empties
 * the BIO. */
static int flush_wbio(tls_conn_t *c, weft_stream_t *s) {
  char *p;
  long n = BIO_get_mem_data(c->wbio, &p);
  if (n <= 0)
    return 0;
  int err = weft__stream_send_raw(s, p, (size_t)n);
  (void)BIO_reset(c->wbio);
  return err;
}

static int tls_feed(void *ctx, const char *p, size_t len) {
  tls_conn_t *c = ctx;
  size_t n;
  if (BIO_write_ex(c->rbio, p, len, &n) != 1 || n != len) {
    ERR_clear_error();
    return WEFT_ENOMEM;
  }
  return 0;
}

static ssize_t tls_pull(void *ctx, weft_stream_t *s, char *out, size_t len) {
  tls_conn_t *c = ctx;
  size_t n = 0;
  ERR_clear_error();
  int rc = SSL_read_ex(c->ssl, out, len, &n);
  /* Post-handshake messages (a KeyUpdate) may want an answer. */
  flush_wbio(c, s);
  if (rc == 1)
    return (ssize_t)n;
  switch (SSL_get_error(c->ssl, rc)) {
  case SSL_ERROR_WANT_READ:
    return 0;
  case SSL_ERROR_ZERO_RETURN:
    return WEFT_EOF;
  default:
    return tls_fail(c->ssl, "TLS read");
  }
}

static int tls_seal(void *ctx, weft_stream_t *s, const char *p, size_t len) {
  tls_conn_t *c = ctx;
  size_t n = 0;
  ERR_clear_error();
  /* A memory BIO takes everything: SSL_write never waits for room. */
  if (SSL_write_ex(c->ssl, p, len, &n) != 1 || n != len)
    return tls_fail(c->ssl, "TLS write");
  return flush_wbio(c, s);
}

static void tls_close_notify(void *ctx, weft_stream_t *s) {
  tls_conn_t *c = ctx;
  if (c->notified)
    return;
  c->notified = true;
  ERR_clear_error();
  (void)SSL_shutdown(c->ssl); /* sends ours; the peer's is not awaited */
  ERR_clear_error();
  flush_wbio(c, s);
}

static void conn_free(tls_conn_t *c) {
  SSL_free(c->ssl); /* and both BIOs */
  free(c);
}

static void tls_free(void *ctx) {
  conn_free(ctx);
}

static const weft__filter_ops_t tls_ops = {
  .feed = tls_feed,
  .pull = tls_pull,
  .seal = tls_seal,
  .close_notify = tls_close_notify,
  .free = tls_free,
};

/* ---------------------------------------------------------- handshake */

static int conn_new(weft_tls_ctx_t *ctx, tls_conn_t **out) {
  tls_conn_t *c = calloc(1, sizeof *c);
  if (!c)
    return WEFT_ENOMEM;
  c->ssl = SSL_new(ctx->ssl_ctx);
  c->rbio = BIO_new(BIO_s_mem());
  c->wbio = BIO_new(BIO_s_mem());
  if (!c->ssl || !c->rbio || !c->wbio) {
    BIO_free(c->rbio);
    BIO_free(c->wbio);
    SSL_free(c->ssl);
    free(c);
    ERR_clear_error();
    return WEFT_ENOMEM;
  }
  /* An empty read BIO means "more to come", not end of file. */
  BIO_set_mem_eof_return(c->rbio, -1);
  SSL_set_bio(c->ssl, c->rbio, c->wbio);
  *out = c;
  return 0;
}

/* Sends what SSL wrote over the plain stream (an await point). */
static int send_plain(tls_conn_t *c, weft_stream_t *s) {
  char *p;
  long n = BIO_get_mem_data(c->wbio, &p);
  if (n <= 0)
    return 0;
  int err = weft_stream_write(s, p, (size_t)n);
  (void)BIO_reset(c->wbio);
  return err;
}

/* Runs the handshake over the plain stream, then makes c its filter. */
static int handshake(weft_stream_t *s, tls_conn_t *c, const char *what) {
  char buf[16384];
  int err;
  for (;;) {
    ERR_clear_error();
    int rc = SSL_do_handshake(c->ssl);
    int e = rc == 1 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, rc);
    if (e != SSL_ERROR_NONE && e != SSL_ERROR_WANT_READ) {
      err = tls_fail(c->ssl, what);
      c->notified = true; /* no close_notify after a failure */
      send_plain(c, s);   /* the alert, best effort */
      return err;
    }
    if ((err = send_plain(c, s)) != 0)
      return err;
    if (rc == 1)
      break;
    ssize_t n = weft_stream_read(s, buf, sizeof buf);
    if (n == 0)
      return WEFT_EOF;
    if (n < 0)
      return (int)n;
    if ((err = tls_feed(c, buf, (size_t)n)) != 0)
      return err;
  }
  /* Bytes past the handshake (the peer's first records) are in the read
   * BIO already, or in the stream's buffer, which set_filter feeds. */
  return weft__stream_set_filter(s, &tls_ops, c);
}

static int tls_begin(weft_stream_t *s, weft_tls_ctx_t *ctx, bool server, tls_conn_t **c) {
  last_error[0] = '\0';
  if (!s || !ctx || ctx->server != server || weft__stream_filter(s, &tls_ops))
    return WEFT_EINVAL;
  return conn_new(ctx, c);
}

int weft_tls_accept(weft_stream_t *s, weft_tls_ctx_t *ctx) {
  tls_conn_t *c;
  int err = tls_begin(s, ctx, true, &c);
  if (err)
    return err;
  SSL_set_accept_state(c->ssl);
  if ((err = handshake(s, c, "TLS accept")) != 0)
    conn_free(c);
  return err;
}

int weft_tls_connect(weft_stream_t *s, weft_tls_ctx_t *ctx, const char *hostname) {
  if (!hostname)
    return WEFT_EINVAL;
  tls_conn_t *c;
  int err = tls_begin(s, ctx, false, &c);
  if (err)
    return err;
  SSL_set_connect_state(c->ssl);
  unsigned char addr[16];
  bool literal = inet_pton(AF_INET, hostname, addr) == 1 || inet_pton(AF_INET6, hostname, addr) == 1;
  /* SNI carries names only (RFC 6066); SSL_set1_host checks a name, or an
   * IP literal against the certificate's IP addresses. */
  if ((!literal && SSL_set_tlsext_host_name(c->ssl, hostname) != 1) ||
      SSL_set1_host(c->ssl, hostname) != 1) {
    ERR_clear_error();
    conn_free(c);
    return WEFT_EINVAL;
  }
  if ((err = handshake(s, c, "TLS connect")) != 0)
    conn_free(c);
  return err;
}

const char *weft_tls_version(const weft_stream_t *s) {
  tls_conn_t *c = weft__stream_filter(s, &tls_ops);
  return c ? SSL_get_version(c->ssl) : NULL;
}
