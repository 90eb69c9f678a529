/* A first weft program: hello, then three sleeps gathered.
 *
 * weft_run() is asyncio.run(): it makes a loop, runs hello() as a task until
 * it returns, and closes the loop. The three naps sleep at the same time, so
 * gathering them takes about as long as the longest, not the sum. */
#include <stdint.h>
#include <stdio.h>
#include <weft.h>

static void *nap(void *arg) {
  uint64_t ms = (uint64_t)(uintptr_t)arg;
  int err = weft_sleep(ms); /* an await point: the loop runs the others meanwhile */
  if (err != 0) {
    weft_task_fail(err);
    return NULL;
  }
  printf("  slept %llu ms\n", (unsigned long long)ms);
  return arg;
}

static void *hello(void *arg) {
  static const uint64_t naps[3] = {300, 100, 200};
  weft_task_t *tasks[3];
  size_t n;
  int err = 0;

  (void)arg;
  printf("hello from weft %s\n", weft_version_string());

  uint64_t start = uv_hrtime();
  for (n = 0; n < 3; n++) {
    err = weft_spawn(NULL, nap, (void *)(uintptr_t)naps[n], &tasks[n]);
    if (err != 0)
      break;
  }
  if (err == 0)
    err = weft_gather(tasks, n, NULL, NULL); /* await all three */
  uint64_t ms = (uv_hrtime() - start) / 1000000;

  while (n > 0)
    weft_task_release(tasks[--n]);
  if (err != 0) {
    weft_task_fail(err);
    return NULL;
  }
  printf("gathered 3 sleeps in %llu ms (the longest is 300 ms, the sum 600 ms)\n",
         (unsigned long long)ms);
  return NULL;
}

int main(void) {
  int err = weft_run(hello, NULL, NULL);
  if (err != 0) {
    fprintf(stderr, "weft_run: %s\n", weft_strerror(err));
    return 1;
  }
  return 0;
}
