/* http_module: the cost of the echo samples' HTTP module alone
 * (samples/echo_http.c over llhttp), with no I/O, the same code both
 * servers of `./run bench-echo` run. It feeds wrk's request (a GET with a
 * Host field) to one connection, one request a feed (plain) and 16 a feed
 * (pipe16), takes the responses, and prints the best of five runs of each:
 *
 *   http_module_plain_ns_per_req N ns
 *   http_module_pipe16_ns_per_req N ns
 *
 * Unlike the servers' figures, these depend on the CPU only, not on the
 * kernel or on how the machine shares out its cores, so a change to the
 * module shows here first. */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "echo_http.h"

#define REQUEST "GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
#define RUNS 5

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The best time a request over RUNS runs of `batches` feeds of `depth`
 * requests each, in ns; -1 if the module refused the input. */
static double measure(int depth, long batches) {
  char batch[16 * sizeof REQUEST];
  size_t len = 0;
  for (int i = 0; i < depth; i++) {
    memcpy(batch + len, REQUEST, sizeof REQUEST - 1);
    len += sizeof REQUEST - 1;
  }
  echo_conn_t *c;
  if (echo_conn_new(&c, NULL) != 0)
    return -1;
  double best = -1;
  for (int run = 0; run < RUNS; run++) {
    double t0 = now_s();
    for (long i = 0; i < batches; i++) {
      if (echo_conn_feed(c, batch, len) != 0) {
        echo_conn_free(c);
        return -1;
      }
      size_t n;
      echo_conn_output(c, &n);
      echo_conn_consume(c, n);
    }
    double ns = (now_s() - t0) * 1e9 / ((double)batches * depth);
    if (best < 0 || ns < best)
      best = ns;
  }
  echo_conn_free(c);
  return best;
}

int main(void) {
  double plain = measure(1, 1000000), pipe16 = measure(16, 100000);
  if (plain < 0 || pipe16 < 0) {
    fprintf(stderr, "http_module: the module refused wrk's request\n");
    return 1;
  }
  printf("http_module_plain_ns_per_req %.0f ns\n", plain);
  printf("http_module_pipe16_ns_per_req %.0f ns\n", pipe16);
  return 0;
}
