/*
 * pf-nsd: portferry's namespace socket helper (see docs/netns.md, "The native helper").
 *
 * A socket keeps the network namespace it was created in, whoever connects it later. This helper
 * only CREATES sockets inside network namespaces and hands them to the forwarder in batches over a
 * unix socket with SCM_RIGHTS; the forwarder connects them itself. It never connects, reads or
 * writes a byte of traffic.
 *
 * Usage (started by the forwarder, src/internals-nsd.ts):  pf-nsd SOCKET_PATH [USERNS_PATH]
 *   1. listens on SOCKET_PATH (inside a private 0700 directory the forwarder made), prints
 *      "listening\n" on stdout, accepts exactly ONE connection within 10 s and only from its
 *      parent (SO_PEERCRED: same uid, pid == getppid()), then unlinks the path;
 *   2. sends a hello record and two probe sockets (TCP and UDP, IPv4) made in its own starting
 *      namespace: the forwarder's startup self-test connects them to itself on loopback;
 *   3. rootless: joins USERNS_PATH (setns CLONE_NEWUSER: allowed because this process is
 *      single-threaded), so that it may enter every network namespace that user namespace owns;
 *   4. sends "ready" (or an error record and exits), then serves requests until EOF.
 * It exits when the forwarder goes away: EOF on the channel, and PR_SET_PDEATHSIG(SIGKILL) (set
 * after the user namespace join, which clears it).
 *
 * Wire format: little-endian fixed records, 16 bytes both ways (see src/internals-nsd.ts).
 *   request:  u32 id | u8 op | u8 family | u8 type | u8 0 | u16 ns | u16 count | u32 0
 *             op 1 OPEN_NS: `count` bytes of an absolute path follow; the answer is a DONE record
 *                           whose value is the namespace's index (or an ERROR record);
 *             op 2 SOCKETS: `count` (1..64) sockets of family 4|6 and type 1 tcp | 2 udp in the
 *                           namespace with index `ns`; answered by one SOCKET record per socket
 *                           (each sent alone with its descriptor), then DONE (value: how many)
 *                           or ERROR (errno) after the ones that could be made.
 *   reply:    u32 id | u8 kind | u8 family | u8 type | u8 0 | i32 value | u32 0
 *             kind 1 SOCKET (a descriptor travels with this record), 2 DONE, 3 ERROR (value:
 *             errno), 4 HELLO (value: pid), 5 READY.
 *             op 3 CLOSE_NS: forget namespace `ns` (its file is closed, so a gone container's
 *                           namespace is not kept alive by us); answered by DONE.
 * One descriptor per sendmsg: the kernel ends a read after a message that carries descriptors,
 * and Node accepts one handle per read, so every record with a descriptor arrives with its own.
 *
 * Every request is validated (op, family, type, counts, index, path shape); anything else ends
 * the helper with exit code 3: only the forwarder can speak to it, so a bad request is a bug.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/un.h>
#include <unistd.h>

#define NSFS_MAGIC_ 0x6e736673
#define PROC_SUPER_MAGIC_ 0x9fa0
#define NS_GET_NSTYPE_ 0xb703 /* _IO(0xb7, 0x3), linux/nsfs.h (4.11+) */
#define MAX_BATCH 64
#define MAX_NS 1024
#define MAX_PATH 4095
#define ACCEPT_TIMEOUT_MS 10000

enum { OP_OPEN_NS = 1, OP_SOCKETS = 2, OP_CLOSE_NS = 3 };
enum { K_SOCKET = 1, K_DONE = 2, K_ERROR = 3, K_HELLO = 4, K_READY = 5 };

struct ns_entry { int fd; dev_t dev; ino_t ino; };
static struct ns_entry ns_tab[MAX_NS];
static int ns_count = 0;
static int ns_current = -1; /* index we are in; -1: the starting namespace */
static int chan = -1;

static void die(int code, const char *what) {
  fprintf(stderr, "pf-nsd: %s\n", what);
  exit(code);
}

static void put32(unsigned char *p, uint32_t v) { p[0] = v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24; }
static uint32_t get32(const unsigned char *p) { return p[0] | p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint16_t get16(const unsigned char *p) { return p[0] | p[1] << 8; }

/*
 * Exits after a last ERROR record, once the forwarder has read it: it closes the channel when it
 * has (or after 5 s). Exiting at once would lose the record: libuv takes a hang-up after a short
 * read for the end of the data, and every read ends at a message that carries descriptors.
 */
static void exit_after_reply(int code) {
  struct pollfd p = { .fd = chan, .events = POLLIN };
  unsigned char b[16];
  while (poll(&p, 1, 5000) > 0 && read(chan, b, sizeof b) > 0) {
  }
  exit(code);
}

/* One record, with `fd` as SCM_RIGHTS when fd >= 0. A broken channel ends the helper. */
static void send_rec(uint32_t id, int kind, int family, int type, int32_t value, int fd) {
  unsigned char rec[16] = {0};
  put32(rec, id);
  rec[4] = kind; rec[5] = family; rec[6] = type;
  put32(rec + 8, (uint32_t)value);
  struct iovec iov = { rec, sizeof rec };
  union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
  struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
  if (fd >= 0) {
    memset(&u, 0, sizeof u);
    m.msg_control = u.buf;
    m.msg_controllen = sizeof u.buf;
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
  }
  for (;;) {
    ssize_t n = sendmsg(chan, &m, MSG_NOSIGNAL);
    if (n == (ssize_t)sizeof rec) return;
    if (n < 0 && errno == EINTR) continue;
    exit(0); /* the forwarder went away (or a short write on a 16-byte record: same thing) */
  }
}

/* Reads exactly n bytes; EOF (the forwarder closed the channel or died) ends the helper. */
static void read_exact(unsigned char *p, size_t n) {
  while (n > 0) {
    ssize_t r = read(chan, p, n);
    if (r == 0) exit(0);
    if (r < 0) {
      if (errno == EINTR) continue;
      exit(0);
    }
    p += r;
    n -= (size_t)r;
  }
}

/* A socket in the current namespace: non-blocking, close-on-exec; TCP with TCP_NODELAY, UDP
 * bound to the wildcard address on an ephemeral port (as the Node helper does). -errno on failure. */
static int make_socket(int family, int type) {
  int af = family == 6 ? AF_INET6 : AF_INET;
  int fd = socket(af, (type == 1 ? SOCK_STREAM : SOCK_DGRAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  if (type == 1) {
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
  }
  int rc;
  if (af == AF_INET6) {
    struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_ANY_INIT };
    rc = bind(fd, (struct sockaddr *)&a, sizeof a);
  } else {
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr = { htonl(INADDR_ANY) } };
    rc = bind(fd, (struct sockaddr *)&a, sizeof a);
  }
  if (rc != 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  return fd;
}

/* OPEN_NS: opens a network namespace file once; the same namespace (dev+inode) keeps its index. */
static void open_ns(uint32_t id, const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) { send_rec(id, K_ERROR, 0, 0, errno, -1); return; }
  struct stat st;
  struct statfs sfs;
  int err = 0;
  if (fstat(fd, &st) != 0 || fstatfs(fd, &sfs) != 0) err = errno;
  else if (S_ISDIR(st.st_mode)) err = EISDIR;
  else if (sfs.f_type != NSFS_MAGIC_ && sfs.f_type != PROC_SUPER_MAGIC_) err = EINVAL;
  else {
    int t = ioctl(fd, NS_GET_NSTYPE_);
    if (t >= 0 && t != CLONE_NEWNET) err = EINVAL; /* ENOTTY (old kernel): setns checks the type */
  }
  if (err != 0) { close(fd); send_rec(id, K_ERROR, 0, 0, err, -1); return; }
  int free_slot = -1;
  for (int i = 0; i < ns_count; i++) {
    if (ns_tab[i].fd < 0) {
      if (free_slot < 0) free_slot = i;
      continue;
    }
    if (ns_tab[i].dev == st.st_dev && ns_tab[i].ino == st.st_ino) {
      close(fd);
      send_rec(id, K_DONE, 0, 0, i + 1, -1);
      return;
    }
  }
  if (free_slot < 0 && ns_count >= MAX_NS) { close(fd); send_rec(id, K_ERROR, 0, 0, EMFILE, -1); return; }
  /* Enter it now: a namespace we may not enter (another user namespace's) fails here, once. */
  if (setns(fd, CLONE_NEWNET) != 0) { err = errno; close(fd); send_rec(id, K_ERROR, 0, 0, err, -1); return; }
  ns_current = free_slot >= 0 ? free_slot : ns_count++;
  ns_tab[ns_current] = (struct ns_entry){ fd, st.st_dev, st.st_ino };
  send_rec(id, K_DONE, 0, 0, ns_current + 1, -1);
}

static void sockets(uint32_t id, int family, int type, int ns, int count) {
  if (ns_tab[ns].fd < 0) { send_rec(id, K_ERROR, family, type, EBADF, -1); return; }
  if (ns_current != ns) {
    if (setns(ns_tab[ns].fd, CLONE_NEWNET) != 0) { send_rec(id, K_ERROR, family, type, errno, -1); return; }
    ns_current = ns;
  }
  for (int i = 0; i < count; i++) {
    int fd = make_socket(family, type);
    if (fd < 0) { send_rec(id, K_ERROR, family, type, -fd, -1); return; }
    send_rec(id, K_SOCKET, family, type, 0, fd);
    close(fd);
  }
  send_rec(id, K_DONE, family, type, count, -1);
}

static void serve(void) {
  unsigned char req[16];
  char path[MAX_PATH + 1];
  for (;;) {
    read_exact(req, sizeof req);
    uint32_t id = get32(req);
    int op = req[4], family = req[5], type = req[6];
    int ns = get16(req + 8), count = get16(req + 10);
    if (req[7] != 0 || get32(req + 12) != 0) die(3, "malformed request (reserved bytes set)");
    if (op == OP_OPEN_NS) {
      if (count < 2 || count > MAX_PATH) die(3, "malformed OPEN_NS request (path length)");
      read_exact((unsigned char *)path, (size_t)count);
      path[count] = '\0';
      if (path[0] != '/' || strlen(path) != (size_t)count) die(3, "malformed OPEN_NS request (path must be absolute, no NUL)");
      open_ns(id, path);
    } else if (op == OP_SOCKETS) {
      if ((family != 4 && family != 6) || (type != 1 && type != 2)) die(3, "malformed SOCKETS request (family/type)");
      if (count < 1 || count > MAX_BATCH) die(3, "malformed SOCKETS request (count)");
      if (ns < 1 || ns > ns_count) die(3, "malformed SOCKETS request (namespace index)");
      sockets(id, family, type, ns - 1, count);
    } else if (op == OP_CLOSE_NS) {
      if (ns < 1 || ns > ns_count || count != 0 || family != 0 || type != 0) die(3, "malformed CLOSE_NS request");
      if (ns_tab[ns - 1].fd >= 0) close(ns_tab[ns - 1].fd);
      ns_tab[ns - 1] = (struct ns_entry){ -1, 0, 0 };
      /* We stay a member of the namespace we are in until the next setns: at most one is kept. */
      send_rec(id, K_DONE, 0, 0, 0, -1);
    } else {
      die(3, "malformed request (op)");
    }
  }
}

/* Listens on `path`, accepts the one connection from our parent, unlinks the path. */
static int accept_parent(const char *path) {
  struct sockaddr_un a = { .sun_family = AF_UNIX };
  if (strlen(path) >= sizeof a.sun_path) die(2, "socket path too long");
  strcpy(a.sun_path, path);
  int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 1) != 0) {
    fprintf(stderr, "pf-nsd: cannot listen on %s: %s\n", path, strerror(errno));
    exit(2);
  }
  if (printf("listening\n") < 0 || fflush(stdout) != 0) exit(2);
  pid_t parent = getppid();
  uid_t me = getuid();
  for (;;) {
    struct pollfd p = { .fd = l, .events = POLLIN };
    int r = poll(&p, 1, ACCEPT_TIMEOUT_MS);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) { unlink(path); die(2, "nobody connected within 10 s"); }
    int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0) continue;
    struct ucred cr;
    socklen_t len = sizeof cr;
    if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cr, &len) == 0 && cr.uid == me && cr.pid == parent) {
      unlink(path);
      close(l);
      return c;
    }
    close(c); /* not our parent: keep waiting for it */
  }
}

int main(int argc, char **argv) {
  if (argc < 2 || argc > 3) die(2, "usage: pf-nsd SOCKET_PATH [USERNS_PATH] (started by portferry's namespace dialer)");
  signal(SIGPIPE, SIG_IGN);
  signal(SIGINT, SIG_IGN); /* Ctrl-C reaches the process group: the forwarder decides when we stop */
  /* The parent may already be gone; pdeathsig is set again after the user namespace join. */
  pid_t parent = getppid();
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) exit(0);
  chan = accept_parent(argv[1]);
  /* Nothing else of ours stays open: stdin/stdout/stderr were given by the forwarder. */
  send_rec(0, K_HELLO, 0, 0, (int32_t)getpid(), -1);
  int probe_tcp = make_socket(4, 1), probe_udp = make_socket(4, 2);
  if (probe_tcp < 0 || probe_udp < 0) {
    send_rec(0, K_ERROR, 4, probe_tcp < 0 ? 1 : 2, probe_tcp < 0 ? -probe_tcp : -probe_udp, -1);
    exit_after_reply(1);
  }
  send_rec(0, K_SOCKET, 4, 1, 0, probe_tcp);
  send_rec(0, K_SOCKET, 4, 2, 0, probe_udp);
  close(probe_tcp);
  close(probe_udp);
  if (argc == 3) {
    int ufd = open(argv[2], O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (ufd < 0 || setns(ufd, CLONE_NEWUSER) != 0) {
      int e = errno;
      fprintf(stderr, "pf-nsd: cannot join user namespace %s: %s\n", argv[2], strerror(e));
      send_rec(0, K_ERROR, 0, 0, e, -1);
      exit_after_reply(1);
    }
    close(ufd);
    /* Joining a user namespace changes credentials, which clears the parent-death signal. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) exit(0);
  }
  send_rec(0, K_READY, 0, 0, 0, -1);
  serve();
  return 0;
}
