// Native contenders and helpers of `npm run bench` (built by bench/native.ts with cc -O2):
//   cbench limit SIZE LAT_US N OUT   the C limit: N producer threads write a prefilled 1 MiB
//                                    buffer into N pipes; this thread poll()s them all, reads
//                                    1 MiB and writev()s a 16-byte header + the chunk to OUT
//   cbench seq SIZE LAT_US N OUT     QEMU's loop: same producers, devices read one after another
//   cbench produce SIZE LAT_US FIFO...   producers only, into named pipes (devices of the Node
//                                    contenders: the same cheap producers as the limit's)
//   cbench drain FIFO...             reads each named pipe to EOF (restore's destinations)
//   cbench sink-unix PATH            accepts one unix connection and reads it to EOF
// LAT_US: a slow device (model b). Its firmware produces the next 1 MiB only when asked,
// i.e. once the reader took the previous one, and takes LAT_US to do it: the producer
// fills the pipe (sized to exactly 1 MiB) with one chunk, waits for POLLOUT (the kernel
// wakes a writer of a full pipe only after a read emptied it), then sleeps LAT_US before
// writing the next. So a read of the data_fd returns LAT_US after the previous read, as
// on a device whose read() waits for the firmware: a reader that reads devices one after
// another pays it per MiB per device, one that reads all devices at once overlaps it.
// (LAT_US 0, model a: the producer writes ahead as fast as the pipe takes it.)
// limit/seq print one JSON line.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (1 << 20)
static long long g_size;
static long g_lat;
struct prod { int fd; const char *path; };

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}
static void die(const char *what) { perror(what); exit(1); }

static void *producer(void *arg) {
  struct prod *p = arg;
  int fd = p->fd >= 0 ? p->fd : open(p->path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) die("open fifo");
  // model (b) needs a pipe of exactly one chunk (a full pipe = one chunk not yet read)
  if (fcntl(fd, F_SETPIPE_SZ, CHUNK) != CHUNK && g_lat) die("F_SETPIPE_SZ 1 MiB (see /proc/sys/fs/pipe-max-size, pipe-user-pages-soft)");
  char *buf = malloc(CHUNK);
  memset(buf, 0x5a, CHUNK);
  for (long long left = g_size; left > 0;) {
    if (g_lat) {
      // wait for the read of the previous chunk (the pipe holds exactly one), then the firmware's time
      if (left != g_size) {
        struct pollfd w = {.fd = fd, .events = POLLOUT};
        while (poll(&w, 1, -1) < 0)
          if (errno != EINTR) die("producer poll");
      }
      usleep(g_lat);
    }
    size_t n = left < CHUNK ? left : CHUNK;
    for (size_t off = 0; off < n;) {
      ssize_t w = write(fd, buf + off, n - off);
      if (w < 0) { if (errno == EINTR) continue; die("producer write"); }
      off += w;
    }
    left -= n;
  }
  close(fd);
  free(buf);
  return NULL;
}

static void *drainer(void *arg) {
  struct prod *p = arg;
  int fd = open(p->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) die("open fifo");
  char *buf = malloc(CHUNK);
  while (read(fd, buf, CHUNK) > 0) {}
  close(fd);
  return NULL;
}

static void report(const char *name, long long bytes, double secs) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
  printf("{\"contender\":\"%s\",\"bytes\":%lld,\"seconds\":%.6f,\"cpuSeconds\":%.6f,\"peakRssKiB\":%ld}\n", name, bytes, secs, cpu, ru.ru_maxrss);
}

static int consume(int n, int seq, const char *out) {
  int ofd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (ofd < 0) die("open out");
  struct prod *ps = calloc(n, sizeof *ps);
  pthread_t *th = calloc(n, sizeof *th);
  struct pollfd *pf = calloc(n, sizeof *pf);
  double t0 = now();
  for (int i = 0; i < n; i++) {
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) die("pipe");
    ps[i].fd = p[1];
    pf[i].fd = p[0];
    pf[i].events = POLLIN;
    pthread_create(&th[i], NULL, producer, &ps[i]);
  }
  char *buf = malloc(CHUNK);
  uint64_t hdr[2];
  long long total = 0;
  int open_ = n;
  for (int cur = 0; open_ > 0;) {
    if (!seq && poll(pf, n, -1) < 0) die("poll");
    int from = seq ? cur : 0, to = seq ? cur + 1 : n;
    for (int i = from; i < to; i++) {
      if (pf[i].fd < 0 || (!seq && !pf[i].revents)) continue;
      ssize_t r = read(pf[i].fd, buf, CHUNK);
      if (r < 0) die("read");
      if (r == 0) { close(pf[i].fd); pf[i].fd = -1; open_--; cur++; continue; }
      hdr[0] = __builtin_bswap64(0xffffffffef100004ull); hdr[1] = __builtin_bswap64(r);
      struct iovec iov[2] = {{hdr, 16}, {buf, (size_t)r}};
      if (writev(ofd, iov, 2) != 16 + r) die("writev");
      total += r;
    }
  }
  double secs = now() - t0;
  for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
  close(ofd);
  report(seq ? "c-sequential" : "c-limit", total, secs);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: see the head of bench/c/cbench.c\n"); return 2; }
  const char *mode = argv[1];
  if (!strcmp(mode, "drain") || !strcmp(mode, "produce")) {
    int first = !strcmp(mode, "produce") ? 4 : 2;
    if (first == 4) { g_size = atoll(argv[2]); g_lat = atol(argv[3]); }
    int n = argc - first;
    struct prod *ps = calloc(n, sizeof *ps);
    pthread_t *th = calloc(n, sizeof *th);
    for (int i = 0; i < n; i++) {
      ps[i].fd = -1;
      ps[i].path = argv[first + i];
      pthread_create(&th[i], NULL, first == 4 ? producer : drainer, &ps[i]);
    }
    for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
    return 0;
  }
  if (!strcmp(mode, "sink-unix")) {
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strncpy(a.sun_path, argv[2], sizeof a.sun_path - 1);
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 1) < 0) die("listen");
    printf("listening\n");
    fflush(stdout);
    int c = accept(s, NULL, NULL);
    char *buf = malloc(CHUNK);
    while (read(c, buf, CHUNK) > 0) {}
    return 0;
  }
  if (argc < 6) return 2;
  g_size = atoll(argv[2]);
  g_lat = atol(argv[3]);
  return consume(atoi(argv[4]), !strcmp(mode, "seq"), argv[5]);
}
