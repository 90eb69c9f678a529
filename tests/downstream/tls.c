/* A weft_tls program: a client context from the system's store, and a real
 * handshake over loopback that must fail as TLS fails.
 *
 * No certificate files are needed: the server task is plain TCP and answers
 * the ClientHello with a line of text, so OpenSSL, on the client's side,
 * parses the answer, refuses it and weft_tls_connect returns WEFT_ETLS with
 * a reason in weft_tls_error(). That runs weft_tls's handshake path, its
 * OpenSSL calls and its hooks into libweft's streams, which a program that
 * only made a context would not. */
#include <stdio.h>
#include <string.h>
#include <weft.h>
#include <weft_tls.h>

typedef struct {
  weft_listener_t *listener;
  weft_tls_ctx_t *ctx;
} tls_demo_t;

/* Reads the ClientHello (some of it), answers in plain text and then reads
 * until the client closes, so that no unread byte turns our close into a
 * reset that the client could see instead of our answer. */
static void *plain_server(void *arg) {
  tls_demo_t *d = arg;
  static const char answer[] = "HTTP/1.0 400 this is not TLS\r\n\r\n";
  char buf[4096];
  weft_stream_t *s;
  int err = weft_tcp_accept(d->listener, &s);
  if (err != 0) {
    weft_task_fail(err);
    return NULL;
  }
  ssize_t n = weft_stream_read(s, buf, sizeof buf);
  if (n > 0)
    err = weft_stream_write(s, answer, sizeof answer - 1);
  while (n > 0 && err == 0)
    n = weft_stream_read(s, buf, sizeof buf);
  weft_stream_close(s);
  if (err != 0)
    weft_task_fail(err);
  return NULL;
}

static void *tls_main(void *arg) {
  tls_demo_t *d = arg;
  weft_task_t *server;
  weft_stream_t *s;
  int err = weft_tcp_listen(&d->listener, "127.0.0.1", 0, NULL);
  if (err == 0)
    err = weft_spawn(NULL, plain_server, d, &server);
  if (err != 0) {
    if (d->listener)
      weft_listener_close(d->listener);
    weft_task_fail(err);
    return NULL;
  }
  err = weft_tcp_connect(&s, "127.0.0.1", weft_listener_port(d->listener));
  if (err == 0) {
    err = weft_tls_connect(s, d->ctx, "localhost");
    if (err == WEFT_ETLS)
      printf("handshake with a plain-text server: %s (%s)\n", weft_strerror(err),
             weft_tls_error());
    else
      printf("handshake with a plain-text server: unexpected %d (%s)\n", err,
             weft_strerror(err));
    if (weft_tls_version(s) != NULL)
      err = WEFT_EINVAL; /* a failed handshake must leave no TLS on s */
    weft_stream_close(s);
  } else {
    weft_listener_close(d->listener); /* the server, in accept, gets WEFT_ECLOSED */
    d->listener = NULL;
  }
  int server_status = 0;
  weft_gather(&server, 1, NULL, &server_status);
  weft_task_release(server);
  if (d->listener)
    weft_listener_close(d->listener);
  if (err != WEFT_ETLS || weft_tls_error()[0] == '\0') {
    weft_task_fail(err == WEFT_ETLS ? WEFT_EINVAL : err);
    return NULL;
  }
  if (server_status != 0) { /* the server read no ClientHello, or could not answer */
    weft_task_fail(server_status);
    return NULL;
  }
  return NULL;
}

int main(void) {
  tls_demo_t d = {NULL, NULL};
  int err = weft_tls_client_ctx(&d.ctx, NULL); /* NULL: the system's CA store */
  if (err != 0) {
    fprintf(stderr, "weft_tls_client_ctx: %s: %s\n", weft_strerror(err), weft_tls_error());
    return 1;
  }
  printf("hello from weft_tls %s: a client context\n", weft_version_string());
  err = weft_run(tls_main, &d, NULL);
  weft_tls_ctx_free(d.ctx);
  if (err != 0) {
    fprintf(stderr, "weft_run: %s\n", weft_strerror(err));
    return 1;
  }
  printf("refused as TLS should be\n");
  return 0;
}
