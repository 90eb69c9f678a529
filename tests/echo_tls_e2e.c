/* The echo server over HTTPS from the outside: makes a throwaway CA, a
 * server certificate for localhost and 127.0.0.1 and an unrelated second CA
 * with the openssl command in a temporary directory, starts the built
 * samples/echo_server with --tls-cert/--tls-key on 127.0.0.1 (any free port,
 * two loops or WORKERS, the mode given), and stops it with SIGTERM.
 *
 *   echo_tls_e2e ECHO_SERVER_PATH reuseport|handoff|least-loaded [WORKERS]
 *
 * Checked: curl --cacert GET and a 400 KB POST echoed byte for byte; TLS 1.3
 * negotiated (openssl s_client -brief); python3's ssl module gets the echo
 * (skipped, saying so, where there is no python3 with ssl); curl with the
 * wrong CA fails verification (exit 60); plain HTTP to the TLS port is
 * refused and closed, and the next TLS request is answered; 200 TLS clients
 * at once (curl --parallel) all answered; a client that connects and sends
 * nothing, and one that stalls in the middle of its ClientHello, are cut by
 * the header deadline (a server with --header-timeout 300 and a long idle
 * timeout, so it is that deadline); SIGTERM with a stalled handshake and an
 * idle TLS connection open ends the server with status 0 within 2 s and a
 * line per loop. Counts and durations are bounded (upper bounds stretched by
 * SLOW in a sanitizer build); nothing leaves the loopback interface.
 */
#define _GNU_SOURCE

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tls_certs.h"

#include "e2e.h"

/* The certificates' directory (tls_certs.h). */
static char g_dir[64];

/* Runs a shell command; its output (stdout and whatever it redirects) in
 * out, and its exit status (-1: killed or not run). */
static int sh(char *out, size_t outlen, const char *fmt, ...) {
  char cmd[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof cmd, fmt, ap);
  va_end(ap);
  FILE *p = popen(cmd, "r");
  if (!p)
    return -1;
  size_t got = 0;
  char sink[4096];
  for (;;) {
    char *into = out && got + 1 < outlen ? out + got : sink;
    size_t room = out && got + 1 < outlen ? outlen - 1 - got : sizeof sink;
    size_t k = fread(into, 1, room, p);
    if (k == 0)
      break;
    if (into != sink)
      got += k;
  }
  if (out)
    out[got] = 0;
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void make_certs(void) {
  if (wt_certs_make(g_dir) != 0) {
    fprintf(stderr, "FAIL: the openssl command could not make the certificates\n");
    exit(1);
  }
}

static void remove_certs(void) {
  wt_certs_remove(g_dir);
}

/* ------------------------------------------------------------- server */

/* server_start with the certificate and key made here before extra. */
static void tls_server_start(server_t *s, const char *path, const char *mode,
                             const char *const *extra) {
  static char cert[128], key[128];
  snprintf(cert, sizeof cert, "%s/srv.pem", g_dir);
  snprintf(key, sizeof key, "%s/srv.key", g_dir);
  const char *opts[16] = {"--tls-cert", cert, "--tls-key", key};
  int n = 4;
  for (; extra && *extra && n < 15; extra++)
    opts[n++] = *extra;
  opts[n] = NULL;
  g_on_fatal = remove_certs;
  server_start(s, path, mode, ", TLS", opts);
}

/* --------------------------------------------------------- raw sockets */

/* Reads until the server closes (true) or timeout_ms passes; the first
 * bytes read in first (NUL-ended). */
static bool closes(int fd, int timeout_ms, char *first, size_t firstlen) {
  double until = now_ms() + timeout_ms;
  size_t got = 0;
  while (now_ms() < until) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 50) <= 0)
      continue;
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0)
      break;
    if (first && got + 1 < firstlen) {
      size_t k = (size_t)n < firstlen - 1 - got ? (size_t)n : firstlen - 1 - got;
      memcpy(first + got, buf, k);
      got += k;
    }
  }
  if (first)
    first[got] = 0;
  return now_ms() < until;
}

/* --------------------------------------------------------------- checks */

#define CURL "curl -s -S --max-time 10"

static void check_curl(void) {
  char out[65536];
  int rc = sh(out, sizeof out, CURL " --cacert %s/ca.pem https://127.0.0.1:%d/hello/tls",
              g_dir, g_port);
  CHECK(rc == 0 && strcmp(out, "/hello/tls") == 0, "curl GET: rc %d, %s", rc, out);
  rc = sh(out, sizeof out, CURL " --cacert %s/ca.pem https://localhost:%d/by/name", g_dir,
          g_port);
  CHECK(rc == 0 && strcmp(out, "/by/name") == 0, "curl GET localhost: rc %d, %s", rc, out);
  /* Two URLs: the kept-alive TLS connection carries both. */
  rc = sh(out, sizeof out,
          CURL " --cacert %s/ca.pem https://127.0.0.1:%d/a https://127.0.0.1:%d/b", g_dir,
          g_port, g_port);
  CHECK(rc == 0 && strcmp(out, "/a/b") == 0, "curl two requests: rc %d, %s", rc, out);

  /* 400 KB both ways, byte for byte. */
  rc = sh(NULL, 0, "head -c 409600 /dev/urandom > %s/body", g_dir);
  CHECK(rc == 0, "making the body");
  rc = sh(out, sizeof out,
          CURL " --cacert %s/ca.pem --data-binary @%s/body -o %s/echoed "
               "-w '%%{http_code} %%{size_download}' https://127.0.0.1:%d/post",
          g_dir, g_dir, g_dir, g_port);
  CHECK(rc == 0 && strcmp(out, "200 409600") == 0, "curl POST 400 KB: rc %d, %s", rc, out);
  rc = sh(NULL, 0, "cmp -s %s/body %s/echoed", g_dir, g_dir);
  CHECK(rc == 0, "the 400 KB body came back different");
}

static void check_tls13(void) {
  char out[65536];
  int rc = sh(out, sizeof out,
              "timeout %d openssl s_client -connect 127.0.0.1:%d -servername localhost "
              "-CAfile %s/ca.pem -verify_return_error -brief </dev/null 2>&1",
              10 * SLOW, g_port, g_dir);
  CHECK(rc == 0 && strstr(out, "Protocol version: TLSv1.3") &&
            strstr(out, "Verification: OK"),
        "openssl s_client: rc %d, %s", rc, out);
}

static void check_python(void) {
  if (sh(NULL, 0, "python3 -c 'import ssl, http.client' >/dev/null 2>&1") != 0) {
    printf("python3 with ssl not found: its check skipped\n");
    return;
  }
  char out[4096];
  int rc = sh(out, sizeof out,
              "python3 -c '\n"
              "import http.client, ssl, sys\n"
              "ctx = ssl.create_default_context(cafile=sys.argv[1])\n"
              "c = http.client.HTTPSConnection(\"127.0.0.1\", int(sys.argv[2]), context=ctx, "
              "timeout=10)\n"
              "c.request(\"POST\", \"/py\", body=b\"from python\")\n"
              "r = c.getresponse()\n"
              "print(r.status, r.read().decode(), c.sock.version())\n"
              "' %s/ca.pem %d 2>&1",
              g_dir, g_port);
  CHECK(rc == 0 && strcmp(out, "200 from python TLSv1.3\n") == 0, "python3 ssl: rc %d, %s",
        rc, out);
}

static void check_wrong_ca(void) {
  char out[4096];
  int rc = sh(out, sizeof out, CURL " --cacert %s/other.pem https://127.0.0.1:%d/x 2>&1",
              g_dir, g_port);
  CHECK(rc == 60, "curl with the wrong CA: exit %d (wanted 60), %s", rc, out);
}

/* Plain HTTP to the TLS port: refused (no HTTP answer) and closed; the
 * server goes on. */
static void check_plain_refused(void) {
  int fd = conn_open();
  static const char req[] = "GET /plain HTTP/1.1\r\nHost: x\r\n\r\n";
  CHECK(write(fd, req, sizeof req - 1) == (ssize_t)(sizeof req - 1), "write");
  char first[256];
  CHECK(closes(fd, 3000 * SLOW, first, sizeof first), "plain HTTP not closed");
  CHECK(strncmp(first, "HTTP/", 5) != 0, "plain HTTP answered in plain text: %s", first);
  close(fd);
  char out[4096];
  int rc = sh(out, sizeof out, CURL " http://127.0.0.1:%d/plain 2>&1", g_port);
  CHECK(rc != 0, "curl plain HTTP to the TLS port succeeded: %s", out);
  rc = sh(out, sizeof out, CURL " --cacert %s/ca.pem https://127.0.0.1:%d/after-plain", g_dir,
          g_port);
  CHECK(rc == 0 && strcmp(out, "/after-plain") == 0, "TLS after plain: rc %d, %s", rc, out);
}

/* 200 clients at once: curl --parallel opens a connection (a handshake)
 * for each; every body must come back. */
static void check_many(void) {
  enum { N = 200 };
  char cfg[128];
  snprintf(cfg, sizeof cfg, "%s/many.cfg", g_dir);
  FILE *f = fopen(cfg, "w");
  CHECK(f != NULL, "cannot write %s", cfg);
  if (!f)
    return;
  for (int i = 0; i < N; i++)
    fprintf(f, "url = \"https://127.0.0.1:%d/many/%d\"\noutput = \"%s/many.%d\"\n", g_port, i,
            g_dir, i);
  fclose(f);
  char out[65536];
  int rc = sh(out, sizeof out,
              "curl -s -S --max-time %d --parallel --parallel-immediate --parallel-max %d "
              "--cacert %s/ca.pem -K %s -w '%%{http_code}\\n' 2>&1",
              30 * SLOW, N, g_dir, cfg);
  int ok = 0;
  for (int i = 0; i < N; i++) {
    char path[128], want[32], got[64] = "";
    snprintf(path, sizeof path, "%s/many.%d", g_dir, i);
    snprintf(want, sizeof want, "/many/%d", i);
    FILE *r = fopen(path, "r");
    if (r) {
      size_t k = fread(got, 1, sizeof got - 1, r);
      got[k] = 0;
      fclose(r);
    }
    ok += strcmp(got, want) == 0;
  }
  CHECK(rc == 0 && ok == N, "%d of %d concurrent TLS clients answered (curl exit %d)", ok, N,
        rc);
  if (rc != 0 || ok != N)
    fprintf(stderr, "%.2000s\n", out);
}

/* With --header-timeout 300 and --idle-timeout 5000 (a server of its own):
 * a stalled handshake is cut by the header deadline, well before the idle
 * one would. */
static void check_stalled_handshake(void) {
  char out[4096];
  int rc = sh(out, sizeof out, CURL " --cacert %s/ca.pem https://127.0.0.1:%d/quick", g_dir,
              g_port);
  CHECK(rc == 0 && strcmp(out, "/quick") == 0, "short deadline server: rc %d, %s", rc, out);

  /* From before the connection: the deadline starts at the accept. */
  double t0 = now_ms();
  int fd = conn_open();
  CHECK(closes(fd, 3000 * SLOW, NULL, 0), "silent client not cut");
  double took = now_ms() - t0;
  CHECK(took > 200 && took < 2000 * SLOW, "silent client cut after %.0f ms", took);
  close(fd);

  /* The start of a ClientHello record, then nothing. */
  t0 = now_ms();
  fd = conn_open();
  static const unsigned char hello[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01};
  CHECK(write(fd, hello, sizeof hello) == (ssize_t)sizeof hello, "write");
  CHECK(closes(fd, 3000 * SLOW, NULL, 0), "stalled ClientHello not cut");
  took = now_ms() - t0;
  CHECK(took > 200 && took < 2000 * SLOW, "stalled ClientHello cut after %.0f ms", took);
  close(fd);
}

int main(int argc, char **argv) {
  if (argc != 3 && argc != 4) {
    fprintf(stderr,
            "usage: echo_tls_e2e ECHO_SERVER reuseport|handoff|least-loaded [WORKERS]\n");
    return 2;
  }
  if (argc == 4)
    g_workers = argv[3];
  signal(SIGPIPE, SIG_IGN);
  make_certs();

  server_t s;
  tls_server_start(&s, argv[1], argv[2], NULL);
  check_curl();
  check_tls13();
  check_python();
  check_wrong_ca();
  check_plain_refused();
  check_many();
  /* Open while SIGTERM comes: a client in its handshake (it sent nothing)
   * and one idle on a kept-alive connection after the handshake. Closed,
   * not waited for. */
  int stalled = conn_open();
  server_stop(&s, true);
  close(stalled);

  static const char *const short_header[] = {"--header-timeout", "300", "--idle-timeout",
                                             "5000", NULL};
  tls_server_start(&s, argv[1], argv[2], short_header);
  check_stalled_handshake();
  server_stop(&s, true);

  remove_certs();
  if (g_failures) {
    fprintf(stderr, "%d checks failed\n", g_failures);
    return 1;
  }
  printf("echo_tls_e2e %s, %s workers: all checks passed\n", argv[2], g_workers);
  return 0;
}
