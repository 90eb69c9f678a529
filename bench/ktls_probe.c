/* ktls_probe: whether kernel TLS could be tried here, for
 * `./run bench-echo --tls`. Kernel TLS needs two things: an OpenSSL built
 * with it (SSL_OP_ENABLE_KTLS then hands the record layer to the kernel
 * once a socket BIO finishes the handshake) and a kernel with the "tls"
 * upper-layer protocol (setsockopt(TCP_ULP, "tls") on a connected TCP
 * socket; the tls module). It prints
 *
 *   ktls_openssl yes|no
 *   ktls_kernel yes|no (the error when no)
 *
 * and exits 0 either way: a machine without kernel TLS is a finding, not a
 * failure. weft_tls itself seals records in user space through memory BIOs
 * (lib/tls.c says why), so kernel TLS would be a second record path. */
#define _DEFAULT_SOURCE

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/opensslconf.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef TCP_ULP
#define TCP_ULP 31
#endif

/* 0 when a connected loopback TCP socket takes the "tls" ULP, else errno. */
static int kernel_tls(void) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  int err = 0, l = socket(AF_INET, SOCK_STREAM, 0), c = socket(AF_INET, SOCK_STREAM, 0);
  if (l < 0 || c < 0 || bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 1) != 0 ||
      getsockname(l, (struct sockaddr *)&a, &len) != 0 ||
      connect(c, (struct sockaddr *)&a, sizeof a) != 0)
    err = errno;
  else if (setsockopt(c, IPPROTO_TCP, TCP_ULP, "tls", sizeof "tls") != 0)
    err = errno;
  if (c >= 0)
    close(c);
  if (l >= 0)
    close(l);
  return err;
}

int main(void) {
#ifdef OPENSSL_NO_KTLS
  puts("ktls_openssl no (built with OPENSSL_NO_KTLS)");
#else
  puts("ktls_openssl yes");
#endif
  int err = kernel_tls();
  if (err)
    printf("ktls_kernel no (setsockopt TCP_ULP \"tls\": %s)\n", strerror(err));
  else
    puts("ktls_kernel yes");
  return 0;
}
