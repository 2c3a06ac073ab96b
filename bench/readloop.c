/* Baseline for bench/uring.ts: QEMU's way of draining device state, a plain
 * read() loop with one buffer, streams one after another.
 * Usage: readloop CHUNK FD|PATH...   (an argument of digits only is an inherited fd)
 * Prints: total_bytes elapsed_ns */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
  if (argc < 3) return 2;
  size_t chunk = strtoul(argv[1], NULL, 10);
  char *buf = malloc(chunk);
  long long total = 0, t0 = now_ns();
  for (int i = 2; i < argc; i++) {
    int fd = strspn(argv[i], "0123456789") == strlen(argv[i]) ? atoi(argv[i]) : open(argv[i], O_RDONLY);
    if (fd < 0) { perror(argv[i]); return 1; }
    for (;;) {
      ssize_t n = read(fd, buf, chunk);
      if (n < 0) { perror("read"); return 1; }
      if (n == 0) break;
      total += n;
    }
    close(fd);
  }
  printf("%lld %lld\n", total, now_ns() - t0);
  return 0;
}
