// pfgen: the benchmark's own load generators and backends, one small C program built at run time
// with `cc -O2 -pthread` (Node would be the bottleneck at these rates: ~110k datagrams/s per core).
// (Over 350 lines on purpose: one file so that it builds with a single cc call wherever bench runs.)
//
// Backends (run inside the container namespace):
//   pfgen serve PORT         TCP: reads 32-byte requests, answers each with 128 bytes, closes on
//                            EOF. The first byte of a request names the workload ('C' connections
//                            per second, 'R' ping-pong, 'I' idle); the server treats them alike.
//   pfgen sink PORT          UDP: counts datagrams and bytes of the current run; a line on stdin
//                            (a 16-hex-digit run token, or empty) prints the counters as JSON,
//                            resets them and makes that token current. Only datagrams that start
//                            with the current token count; any other is counted as "other" (late
//                            datagrams of an earlier run, still queued in a forwarder).
// Clients (run in the client namespace or the host namespace):
//   pfgen rr HOST PORT SECONDS              one connection, ping-pong; prints JSON
//   pfgen cps HOST PORT SECONDS THREADS     connect, request, reply, close, in a loop; prints JSON
//   pfgen idle HOST PORT COUNT              opens COUNT connections, each proven end to end by one
//                                           request/reply; prints JSON, then holds them until stdin closes
//   pfgen udp HOST PORT SIZE SECONDS TOKEN  sends SIZE-byte datagrams (starting with the 8 bytes of
//                                           the hex TOKEN) as fast as it can; prints JSON
// Every line printed is one JSON object; errors go to stderr and exit 2.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define REQ 32
#define RESP 128

static void die(const char *what) {
  fprintf(stderr, "pfgen: %s: %s\n", what, strerror(errno));
  exit(2);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static struct sockaddr_in addr_of(const char *host, const char *port) {
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)atoi(port));
  if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
    fprintf(stderr, "pfgen: not an IPv4 address: %s\n", host);
    exit(2);
  }
  return sa;
}

static void set_timeouts(int fd, int seconds) {
  struct timeval tv = {seconds, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/* Reads exactly n bytes; returns n, or what it got before EOF/error. */
static ssize_t read_full(int fd, char *buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, buf + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += (size_t)r;
  }
  return (ssize_t)got;
}

static int write_full(int fd, const char *buf, size_t n) {
  size_t put = 0;
  while (put < n) {
    ssize_t w = write(fd, buf + put, n - put);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    put += (size_t)w;
  }
  return 0;
}

static int listen_on(int type, const char *port) {
  int fd = socket(AF_INET, type, 0);
  if (fd < 0) die("socket");
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in sa = addr_of("0.0.0.0", port);
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
  if (type == SOCK_STREAM && listen(fd, 4096) < 0) die("listen");
  return fd;
}

// -- serve: epoll TCP backend ------------------------------------------------------------------

struct conn {
  int fd;
  int have; /* bytes of the current request */
  char kind;
};

static int serve(const char *port) __attribute__((noreturn));
static int serve(const char *port) {
  int lfd = listen_on(SOCK_STREAM, port);
  fcntl(lfd, F_SETFL, O_NONBLOCK);
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
  char resp[RESP];
  memset(resp, 'r', sizeof resp);
  printf("{\"ready\":true}\n");
  fflush(stdout);
  struct epoll_event evs[256];
  char buf[4096];
  for (;;) {
    int n = epoll_wait(ep, evs, 256, -1);
    if (n < 0 && errno == EINTR) continue;
    for (int i = 0; i < n; i++) {
      struct conn *c = evs[i].data.ptr;
      if (c == NULL) {
        for (;;) {
          int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
          if (fd < 0) break;
          int one = 1;
          setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          struct conn *nc = calloc(1, sizeof *nc);
          nc->fd = fd;
          struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = nc};
          epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
        }
        continue;
      }
      int closeit = 0;
      for (;;) {
        ssize_t r = read(c->fd, buf, sizeof buf);
        if (r < 0 && errno == EAGAIN) break;
        if (r <= 0) {
          closeit = 1;
          break;
        }
        for (ssize_t j = 0; j < r; j++) {
          if (c->have == 0) c->kind = buf[j];
          if (++c->have == REQ) {
            c->have = 0;
            /* 128 bytes always fit an empty socket buffer: a blocking write is never needed. */
            if (write(c->fd, resp, RESP) != RESP) closeit = 1;
          }
        }
        if (closeit) break;
      }
      if (closeit) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        free(c);
      }
    }
  }
}

// -- sink: UDP backend that counts --------------------------------------------------------------

/* 16 hex digits → 8 bytes; returns 0 when the text is not such a token. */
static int parse_token(const char *hex, unsigned char out[8]) {
  for (int i = 0; i < 8; i++) {
    unsigned v;
    if (sscanf(hex + 2 * i, "%2x", &v) != 1) return 0;
    out[i] = (unsigned char)v;
  }
  return 1;
}

static int sink(const char *port) {
  int fd = listen_on(SOCK_DGRAM, port);
  int big = 32 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big);
  fcntl(fd, F_SETFL, O_NONBLOCK);
  enum { B = 64 };
  static char bufs[B][2048];
  struct mmsghdr msgs[B];
  struct iovec iov[B];
  for (int i = 0; i < B; i++) {
    iov[i].iov_base = bufs[i];
    iov[i].iov_len = sizeof bufs[i];
    memset(&msgs[i], 0, sizeof msgs[i]);
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  unsigned long long count = 0, bytes = 0, minsz = (unsigned long long)-1, maxsz = 0, other = 0;
  unsigned char token[8];
  int have_token = 0;
  printf("{\"ready\":true}\n");
  fflush(stdout);
  struct pollfd pfd[2] = {{.fd = fd, .events = POLLIN}, {.fd = 0, .events = POLLIN}};
  for (;;) {
    if (poll(pfd, 2, -1) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    if (pfd[0].revents & POLLIN) {
      for (;;) {
        int n = recvmmsg(fd, msgs, B, MSG_DONTWAIT, NULL);
        if (n <= 0) break;
        for (int i = 0; i < n; i++) {
          unsigned long long l = msgs[i].msg_len;
          if (!have_token || l < sizeof token || memcmp(bufs[i], token, sizeof token) != 0) {
            other++;
            continue;
          }
          count++;
          bytes += l;
          if (l < minsz) minsz = l;
          if (l > maxsz) maxsz = l;
        }
      }
    }
    if (pfd[1].revents & (POLLIN | POLLHUP)) {
      char line[64];
      ssize_t r = read(0, line, sizeof line - 1);
      if (r <= 0) return 0;
      line[r] = 0;
      printf("{\"datagrams\":%llu,\"bytes\":%llu,\"minSize\":%llu,\"maxSize\":%llu,\"other\":%llu}\n", count, bytes, count ? minsz : 0, maxsz, other);
      fflush(stdout);
      have_token = parse_token(line, token);
      count = bytes = maxsz = other = 0;
      minsz = (unsigned long long)-1;
    }
  }
}

// -- clients ------------------------------------------------------------------------------------

/* One request/reply on a fresh or given socket; returns 0 when the full reply arrived. */
static int transact(int fd, char kind) {
  char req[REQ], resp[RESP];
  memset(req, 'q', sizeof req);
  req[0] = kind;
  if (write_full(fd, req, REQ) < 0) return -1;
  return read_full(fd, resp, RESP) == RESP ? 0 : -1;
}

static int connect_to(const struct sockaddr_in *sa, int timeout) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  set_timeouts(fd, timeout);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) < 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static int rr(const char *host, const char *port, double seconds) {
  struct sockaddr_in sa = addr_of(host, port);
  int fd = connect_to(&sa, 5);
  if (fd < 0) {
    printf("{\"transactions\":0,\"error\":\"connect: %s\"}\n", strerror(errno));
    return 0;
  }
  size_t cap = 1 << 20, n = 0;
  double *lat = malloc(cap * sizeof *lat);
  const char *err = NULL;
  double start = now(), end = start + seconds, t = start;
  while (t < end) {
    double t0 = now();
    if (transact(fd, 'R') < 0) {
      err = errno ? strerror(errno) : "short reply";
      break;
    }
    t = now();
    if (n == cap) lat = realloc(lat, (cap *= 2) * sizeof *lat);
    lat[n++] = (t - t0) * 1e6;
  }
  double elapsed = now() - start;
  close(fd);
  qsort(lat, n, sizeof *lat, cmp_double);
  double p50 = n ? lat[n / 2] : 0, p99 = n ? lat[(size_t)(n * 0.99)] : 0;
  printf("{\"transactions\":%zu,\"seconds\":%.6f,\"p50us\":%.2f,\"p99us\":%.2f%s%s%s}\n", n, elapsed, p50, p99, err ? ",\"error\":\"" : "", err ? err : "",
         err ? "\"" : "");
  return 0;
}

struct cps_arg {
  struct sockaddr_in sa;
  double end;
  unsigned long ok, failed;
  int lasterr;
};

static void *cps_thread(void *p) {
  struct cps_arg *a = p;
  char resp[RESP];
  while (now() < a->end) {
    int fd = connect_to(&a->sa, 5);
    if (fd < 0) {
      a->failed++;
      a->lasterr = errno;
      if (a->failed > 1000 && a->ok == 0) break;
      continue;
    }
    char req[REQ];
    memset(req, 'q', sizeof req);
    req[0] = 'C';
    /* The client closes first, as HTTP/1.0-style clients do: its TIME_WAIT ports are reused
       (tcp_tw_reuse) for the same destination with coherent timestamps. A server-side close would
       leave TIME_WAIT at the server for tuples that DNAT hides from the client, and SYNs that
       reuse a client port would then be answered with challenge ACKs and wait a 1 s RTO. */
    if (write_full(fd, req, REQ) == 0 && read_full(fd, resp, RESP) == RESP)
      a->ok++;
    else {
      a->failed++;
      a->lasterr = errno ? errno : EPROTO;
    }
    close(fd);
  }
  return NULL;
}

static int cps(const char *host, const char *port, double seconds, int threads) {
  struct cps_arg args[64];
  pthread_t tid[64];
  if (threads < 1 || threads > 64) threads = 4;
  double start = now();
  for (int i = 0; i < threads; i++) {
    memset(&args[i], 0, sizeof args[i]);
    args[i].sa = addr_of(host, port);
    args[i].end = start + seconds;
    pthread_create(&tid[i], NULL, cps_thread, &args[i]);
  }
  unsigned long ok = 0, failed = 0;
  int lasterr = 0;
  for (int i = 0; i < threads; i++) {
    pthread_join(tid[i], NULL);
    ok += args[i].ok;
    failed += args[i].failed;
    if (args[i].lasterr) lasterr = args[i].lasterr;
  }
  double elapsed = now() - start;
  printf("{\"connections\":%lu,\"failed\":%lu,\"seconds\":%.6f%s%s%s}\n", ok, failed, elapsed, lasterr ? ",\"error\":\"" : "", lasterr ? strerror(lasterr) : "",
         lasterr ? "\"" : "");
  return 0;
}

static int idle(const char *host, const char *port, long count) {
  struct sockaddr_in sa = addr_of(host, port);
  long ok = 0, failed = 0, streak = 0;
  int lasterr = 0;
  double start = now();
  for (long i = 0; i < count; i++) {
    int fd = connect_to(&sa, 2);
    if (fd >= 0 && transact(fd, 'I') == 0) {
      ok++;
      streak = 0;
      continue; /* kept open on purpose */
    }
    lasterr = errno ? errno : EPROTO;
    if (fd >= 0) close(fd);
    failed++;
    /* A forwarder that stopped accepting would cost 2 s per attempt: give up on a streak. */
    if (++streak >= 10) {
      failed += count - i - 1;
      break;
    }
  }
  printf("{\"open\":%ld,\"failed\":%ld,\"seconds\":%.6f%s%s%s}\n", ok, failed, now() - start, lasterr ? ",\"error\":\"" : "", lasterr ? strerror(lasterr) : "",
         lasterr ? "\"" : "");
  fflush(stdout);
  char b[64];
  while (read(0, b, sizeof b) > 0) {
  }
  return 0;
}

static int udp(const char *host, const char *port, int size, double seconds, const char *hex) {
  struct sockaddr_in sa = addr_of(host, port);
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0) die("socket");
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
  if (size < 1 || size > 2000) size = 64;
  enum { B = 32 };
  static char buf[2048];
  memset(buf, 'u', sizeof buf);
  if (!parse_token(hex, (unsigned char *)buf)) {
    fprintf(stderr, "pfgen: not a 16-hex-digit token: %s\n", hex);
    return 2;
  }
  if (size < 8) size = 8;
  struct mmsghdr msgs[B];
  struct iovec iov[B];
  for (int i = 0; i < B; i++) {
    iov[i].iov_base = buf;
    iov[i].iov_len = (size_t)size;
    memset(&msgs[i], 0, sizeof msgs[i]);
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  unsigned long long sent = 0, errors = 0;
  double start = now(), end = start + seconds;
  int lasterr = 0;
  while (now() < end) {
    int n = sendmmsg(fd, msgs, B, 0);
    if (n < 0) {
      /* ECONNREFUSED from an ICMP error, ENOBUFS: count and keep sending. */
      errors++;
      lasterr = errno;
      continue;
    }
    sent += (unsigned long long)n;
  }
  printf("{\"sent\":%llu,\"sendErrors\":%llu,\"seconds\":%.6f%s%s%s}\n", sent, errors, now() - start, lasterr ? ",\"error\":\"" : "", lasterr ? strerror(lasterr) : "",
         lasterr ? "\"" : "");
  return 0;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  setvbuf(stdout, NULL, _IOLBF, 0);
  const char *mode = argc > 1 ? argv[1] : "";
  if (!strcmp(mode, "serve") && argc == 3) return serve(argv[2]);
  if (!strcmp(mode, "sink") && argc == 3) return sink(argv[2]);
  if (!strcmp(mode, "rr") && argc == 5) return rr(argv[2], argv[3], atof(argv[4]));
  if (!strcmp(mode, "cps") && argc == 6) return cps(argv[2], argv[3], atof(argv[4]), atoi(argv[5]));
  if (!strcmp(mode, "idle") && argc == 5) return idle(argv[2], argv[3], atol(argv[4]));
  if (!strcmp(mode, "udp") && argc == 7) return udp(argv[2], argv[3], atoi(argv[4]), atof(argv[5]), argv[6]);
  fprintf(stderr, "usage: pfgen serve PORT | sink PORT | rr HOST PORT SECONDS | cps HOST PORT SECONDS THREADS | idle HOST PORT COUNT | udp HOST PORT SIZE SECONDS TOKEN\n");
  return 2;
}
