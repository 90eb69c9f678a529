/* What the echo server's end-to-end drivers (echo_e2e.c, and echo_tls_e2e.c
 * over HTTPS) share: the sanitizer slack SLOW, the CHECK that counts a
 * failure and goes on, the server started on 127.0.0.1 port 0 and stopped
 * with SIGTERM, and a raw connection to it. Each driver is one program; the
 * state here (the server's port, the failure count, --workers) is its own. */
#ifndef WEFT_TESTS_E2E_H
#define WEFT_TESTS_E2E_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* The server's promises of time (an answer within seconds, an idle close
 * soon after its deadline, a stop within 2 s) are checked as stated in a
 * plain build. A sanitizer build (the drivers are built with the server's
 * flags) runs the same server several times slower, most of all where a
 * task starts or the runtime tears down: TSan makes and destroys a fiber
 * for each task's stack, milliseconds apiece where a plain build takes
 * microseconds, and on a loaded machine a crowd of connections then takes
 * seconds to start and the exit a second or more to free their stacks. So
 * there every upper bound on the server's time stretches by SLOW; a lower
 * bound ("not before") never does. */
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define E2E_TSAN 1
#endif
#if __has_feature(address_sanitizer)
#define E2E_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__) || defined(E2E_TSAN)
#define SLOW 3
#elif defined(__SANITIZE_ADDRESS__) || defined(E2E_ASAN)
#define SLOW 2
#else
#define SLOW 1
#endif

static int g_port;
static int g_failures;
/* --workers: 2 unless the command line says otherwise (1: the server runs
 * its one loop on the main thread, with no pool). */
static const char *g_workers = "2";
/* Run before the driver exits because the server could not start (the TLS
 * driver removes its certificates), or NULL. */
static void (*g_on_fatal)(void);

#define CHECK(cond, ...)                                              \
  do {                                                                \
    if (!(cond)) {                                                    \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);            \
      fprintf(stderr, __VA_ARGS__);                                   \
      fputc('\n', stderr);                                            \
      g_failures++;                                                   \
    }                                                                 \
  } while (0)

static inline double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

typedef struct server {
  pid_t pid;
  FILE *out; /* its stdout */
  int port;
} server_t;

/* Starts path --host 127.0.0.1 --port 0 --workers g_workers --mode mode,
 * then extra (more options, NULL-ended, or NULL), and reads the port from
 * its first line, which must also contain says (", TLS") unless that is
 * NULL. Exits the driver if the server does not say where it listens. */
static inline void server_start(server_t *s, const char *path, const char *mode, const char *says,
                                const char *const *extra) {
  int fds[2];
  if (pipe(fds) != 0) {
    perror("pipe");
    exit(1);
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  char *argv[32];
  int n = 0;
  argv[n++] = (char *)path;
  argv[n++] = "--host";
  argv[n++] = "127.0.0.1";
  argv[n++] = "--port";
  argv[n++] = "0";
  argv[n++] = "--workers";
  argv[n++] = (char *)g_workers;
  argv[n++] = "--mode";
  argv[n++] = (char *)mode;
  for (; extra && *extra && n < 31; extra++)
    argv[n++] = (char *)*extra;
  argv[n] = NULL;
  if (posix_spawn(&s->pid, path, &fa, NULL, argv, environ) != 0) {
    perror("posix_spawn");
    exit(1);
  }
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  s->out = fdopen(fds[0], "r");
  char line[256];
  char *at = fgets(line, sizeof line, s->out) ? strstr(line, "127.0.0.1:") : NULL;
  if (!at || sscanf(at + 10, "%d", &s->port) != 1 || (says && !strstr(line, says))) {
    fprintf(stderr, "FAIL: the server did not say where it listens%s%s\n", says ? " with " : "",
            says ? says : "");
    kill(s->pid, SIGKILL);
    if (g_on_fatal)
      g_on_fatal();
    exit(1);
  }
  g_port = s->port;
}

/* SIGTERM; with check, the server must exit 0 within 2 s (times SLOW) and
 * print a line per loop. */
static inline void server_stop(server_t *s, bool check) {
  double t0 = now_ms();
  kill(s->pid, SIGTERM);
  int status = 0;
  pid_t r;
  while ((r = waitpid(s->pid, &status, WNOHANG)) == 0 && now_ms() - t0 < 5000 * SLOW)
    usleep(10000);
  double took = now_ms() - t0;
  if (r == 0) {
    kill(s->pid, SIGKILL);
    waitpid(s->pid, &status, 0);
    CHECK(false, "the server did not exit within %d s of SIGTERM", 5 * SLOW);
  } else if (check) {
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
    CHECK(took < 2000 * SLOW, "exit took %.0f ms (at most %d)", took, 2000 * SLOW);
    char line[256];
    int loops = 0;
    while (fgets(line, sizeof line, s->out))
      if (strncmp(line, "loop weft-", 10) == 0 && strstr(line, "connections") &&
          strstr(line, "requests"))
        loops++;
    CHECK(loops == atoi(g_workers), "%d per-loop lines, not %s", loops, g_workers);
  }
  fclose(s->out);
}

/* A plain TCP connection to the server, or the driver exits. */
static inline int conn_open(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    perror("connect");
    exit(1);
  }
  return fd;
}

#endif
