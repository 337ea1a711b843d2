/* realise sandbox helper: runs one builder the way Nix 2.8's Linux sandbox does.
   Usage: helper [options] -- BUILDER ARGV0 ARGS...   (environment passed through as is)
   Options: --root DIR  --uid N --gid N  --net (keep host network)  --build-dir DIR (inside)
            --bind SRC DST | --bind-ro SRC DST | --bind-try SRC DST | --bind-ro-try SRC DST
            --bind-ro-link SRC DST (a file input: hard-linked to DST, as Nix does, then bound read-only on it)
            --shm-size SIZE  --seccomp-fd FD  --status-fd FD  --linux32
            --store-dir DIR (inside: bound onto itself as a shared mount, as Nix does)
            --real-store-dir DIR --output NAME... (once the builder is gone, its outputs NAME, if there,
              are renamed from the chroot's store dir to DIR; what cannot be is left for the caller)
            --recycle-to NAME --skeleton-spec HEX --skeleton-files A/B/... --skeleton-mounts C/D/...
              (then, if every output was moved: the chroot, a pooled skeleton, is checked as ChrootPool
              in chroot.ts describes (skeleton-check.h: the files unlinked from its store dir first, the
              mounts the directories it may keep) and, unchanged, renamed to NAME beside it: "kept")
   Status (on --status-fd, one line): "exit N", "signal N" or "error MESSAGE"; "kept" before the first two. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/signalfd.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>
#include "skeleton-check.h"

struct bind { const char *src, *dst; int ro, optional, link; };
static struct bind binds[4096];
static int nbinds;
static const char *root, *buildDir = "/build", *shmSize = "50%", *storeDir, *realStoreDir;
static const char *outputs[64];
static int noutputs;
static int chrootStoreFd = -1, realStoreFd = -1; /* see moveOutputsOut */
static int tooManyOutputs; /* outputs past the first 64, left for the caller */
static int outputsLeft; /* moveOutputsOut may have left an output in the chroot */
/* A pooled skeleton to check and keep after the build (see recycleSkeleton): the name it goes to in the
   real store dir, its reference state (hex), the names of the build's files in its store dir and of the
   directories it may keep there ('/'-separated). */
static const char *recycleTo, *skeletonSpec, *skeletonFiles = "", *skeletonMounts = "";
static int chrootRootFd = -1, chrootParentFd = -1; /* the chroot's root and the directory it is in (see openStoreDirs) */
static int64_t placedNs; /* its ctime then: the rename into place (see skeletonCheckAt) */
static dev_t chrootDev; static ino_t chrootIno; /* the inode of chrootRootFd, which the check sees (see recycleSkeleton) */
static struct skeletonIds skIds; /* our ids outside and inside the user namespace (prepare) */
static long overflowUid = -2, overflowGid = -2; /* the kernel's overflow ids (overflowIds): -1 if unknown */
static int uidIn = 1000, gidIn = 100, keepNet, seccompFd = -1, statusFd = -1, linux32;
static int errPipe[2];
static int failQuiet; /* a warm process that cannot get ready just exits */
/* Server mode: the filter is installed once in the server and inherited by every build (loading it per
   build compiles the BPF program each time); no_new_privs comes with it, as Nix sets it for builders. */
static int seccompInherited;

static void status(const char *fmt, ...);

static void fail(const char *fmt, ...) {
  char buf[4096];
  va_list ap; va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf - 64, fmt, ap);
  va_end(ap);
  if (errno) n += snprintf(buf + n, 64, ": %s", strerror(errno));
  if (failQuiet) _exit(125);
  if (errPipe[1] > 0) { if (write(errPipe[1], buf, n) < 0) {} }
  else if (statusFd >= 0) { status("error %s\n", buf); }
  else fprintf(stderr, "realise-sandbox: %s\n", buf);
  _exit(125);
}

/* 0, or -1 with errno. */
static int putFile(const char *path, const char *data) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  int ok = write(fd, data, strlen(data)) == (ssize_t) strlen(data);
  close(fd);
  return ok ? 0 : -1;
}

static void writeFile(const char *path, const char *data) {
  if (putFile(path, data) == -1) fail("writing %s", path);
}

/* mkdir -p: one mkdir when the parent exists (in a reused chroot skeleton, every target already does). */
static void mkdirs(const char *path, mode_t mode) {
  if (mkdir(path, mode) == 0 || errno == EEXIST) { errno = 0; return; }
  if (errno != ENOENT) fail("creating %s", path);
  char buf[4096];
  snprintf(buf, sizeof buf, "%s", path);
  char *slash = strrchr(buf, '/');
  if (slash && slash != buf) { *slash = 0; mkdirs(buf, 0755); }
  if (mkdir(path, mode) && errno != EEXIST) fail("creating %s", path);
  errno = 0;
}

/* Make a missing mount point: a directory, or an empty file for a non-directory (a file input hard-linked
   into place by linkInputs is its own). A (dangling) symbolic link there is refused, not followed: what it
   points to may be outside the chroot. */
static void makeMountPoint(const char *target, int dir) {
  struct stat st;
  if (lstat(target, &st) == 0 && S_ISLNK(st.st_mode)) { errno = 0; fail("mount point '%s' is a symbolic link", target); }
  errno = 0;
  if (dir) { mkdirs(target, 0755); return; }
  char parent[4096]; snprintf(parent, sizeof parent, "%s", target);
  char *slash = strrchr(parent, '/'); if (slash && slash != parent) { *slash = 0; mkdirs(parent, 0755); }
  int fd = open(target, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) fail("creating %s", target);
  close(fd);
}

/* mount(2) on target, which is made first only when the mount finds it missing: in a chroot made by
   realise (a pooled skeleton, or one made for the helper, devSkeleton) every mount point is there
   already, so a mount costs one system call, not also an mkdir and an open that find it there (some 35
   per build of three file inputs). -1 with errno as mount(2)'s. */
static int mountOn(const char *src, const char *target, const char *type, unsigned long flags, const char *data, int dir) {
  if (mount(src, target, type, flags, data) == 0) return 0;
  if (errno != ENOENT) return -1;
  makeMountPoint(target, dir);
  return mount(src, target, type, flags, data);
}

static void doBind(const struct bind *b) {
  char target[4096];
  snprintf(target, sizeof target, "%s%s", root, b->dst);
  if (mount(b->src, target, "", MS_BIND | MS_REC, 0) == -1) {
    /* The source or the mount point is missing (the source's attributes only matter then). */
    struct stat st;
    if (errno != ENOENT) fail("bind mount from '%s' to '%s' failed", b->src, target);
    if (stat(b->src, &st) == -1) {
      if (b->optional && errno == ENOENT) { errno = 0; return; }
      fail("getting attributes of path '%s'", b->src);
    }
    makeMountPoint(target, S_ISDIR(st.st_mode));
    if (mount(b->src, target, "", MS_BIND | MS_REC, 0) == -1) fail("bind mount from '%s' to '%s' failed", b->src, target);
  }
  if (b->ro) {
    struct statvfs sv;
    unsigned long flags = MS_BIND | MS_REMOUNT | MS_RDONLY;
    if (statvfs(target, &sv) == 0) {
      if (sv.f_flag & ST_NOSUID) flags |= MS_NOSUID;
      if (sv.f_flag & ST_NODEV) flags |= MS_NODEV;
      if (sv.f_flag & ST_NOEXEC) flags |= MS_NOEXEC;
      if (sv.f_flag & ST_NOATIME) flags |= MS_NOATIME;
      if (sv.f_flag & ST_NODIRATIME) flags |= MS_NODIRATIME;
      if (sv.f_flag & ST_RELATIME) flags |= MS_RELATIME;
    }
    if (mount(0, target, 0, flags, 0) == -1) fail("making '%s' read-only", target);
  }
}

/* File inputs are hard-linked into the chroot's store dir, as Nix does (no new inode), before the chroot
   is mounted (a link cannot cross mounts); where one cannot be (another file system, too many links),
   doBind makes an empty file as its mount point, which the mount hides all the same. */
static void linkInputs(void) {
  char target[4096];
  for (int i = 0; i < nbinds; i++) {
    struct bind *b = &binds[i];
    if (!b->link) continue;
    snprintf(target, sizeof target, "%s%s", root, b->dst);
    (void) link(b->src, target); /* else doBind makes an empty file there */
  }
  errno = 0;
}

/* Bring up the loopback interface of our network namespace: 0, or -1 with errno and *what set. */
static int loopbackUp(const char **what) {
  int fd = socket(PF_INET, SOCK_DGRAM | SOCK_CLOEXEC, IPPROTO_IP);
  if (fd < 0) { *what = "cannot open IP socket"; return -1; }
  struct ifreq ifr; memset(&ifr, 0, sizeof ifr);
  strcpy(ifr.ifr_name, "lo");
  ifr.ifr_flags = IFF_UP | IFF_LOOPBACK | IFF_RUNNING;
  int r = ioctl(fd, SIOCSIFFLAGS, &ifr);
  int e = errno;
  close(fd);
  errno = e;
  if (r == -1) *what = "cannot set loopback interface flags";
  return r;
}

static int netJoined; /* per-build process: it joined a pooled network namespace (see the pool below) */

/* Inside the new namespaces, what belongs to them rather than to a process: loopback up (private
   network; a pooled namespace has it up already), host and domain name, "/" made private. Done ahead of
   the request by the per-build process. */
static void nsSetup(void) {
  const char *what;
  if (!keepNet && !netJoined && loopbackUp(&what) == -1) fail("%s", what);
  if (sethostname("localhost", 9) == -1) fail("cannot set host name");
  if (setdomainname("(none)", 6) == -1) fail("cannot set domain name");
  if (mount(0, "/", 0, MS_PRIVATE | MS_REC, 0) == -1) fail("unable to make '/' private");
}

static int hostRoot; /* the builder is the host's uid 0 (we run as root: no build users) */

/* Run as root, the builder is the host's uid 0, and the kernel gives uid 0 the owner's permissions on
   /proc's root-owned files whatever its capabilities: it could write kernel.core_pattern (a program run
   as host root on the next crash), vm.*, its network namespace's sysctls, /proc/sysrq-trigger, IRQ
   affinities, PCI config space. Those parts are bound read-only over themselves (Docker's list; bwrap's
   plus /proc/sys and /proc/fs). The read-only flag is locked in a nested user namespace, and the
   covered procfs no longer counts as fully visible, so a nested user namespace cannot mount a fresh one. */
static void procReadOnly(const char *proc) {
  static const char *const parts[] = { "sys", "sysrq-trigger", "irq", "bus", "fs" };
  char path[4096 + 16];
  for (size_t k = 0; k < sizeof parts / sizeof *parts; k++) {
    snprintf(path, sizeof path, "%s/%s", proc, parts[k]);
    if (mount(path, path, 0, MS_BIND, 0) == -1) {
      if (errno == ENOENT) continue; /* e.g. no /proc/sysrq-trigger without CONFIG_MAGIC_SYSRQ */
      fail("unable to bind mount '%s'", path);
    }
    if (mount(0, path, 0, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, 0) == -1) fail("making '%s' read-only", path);
  }
  errno = 0;
}

/* The rest: mounts, pivot, credentials, exec. */
static void childLate(char **argv, struct sock_fprog *prog) {
  char path[4096];
  linkInputs();
  if (mount(root, root, 0, MS_BIND, 0) == -1) fail("unable to bind mount '%s'", root);
  if (storeDir) {
    /* As Nix: the chroot's store dir is a mount of its own (a shared subtree), before the binds. */
    snprintf(path, sizeof path, "%s%s", root, storeDir);
    if (mount(path, path, 0, MS_BIND, 0) == -1) fail("unable to bind mount the Nix store");
    if (mount(0, path, 0, MS_SHARED, 0) == -1) fail("unable to make '%s' shared", path);
  }
  for (int i = 0; i < nbinds; i++) doBind(&binds[i]);

  snprintf(path, sizeof path, "%s/proc", root);
  if (mountOn("none", path, "proc", 0, 0, 1) == -1) fail("mounting /proc");
  if (hostRoot) procReadOnly(path);
  struct stat st;
  if (stat("/dev/shm", &st) == 0) {
    char opt[256]; snprintf(opt, sizeof opt, "size=%s", shmSize);
    snprintf(path, sizeof path, "%s/dev/shm", root);
    if (mountOn("none", path, "tmpfs", 0, opt, 1) == -1) fail("mounting /dev/shm");
  }
  snprintf(path, sizeof path, "%s/dev/ptmx", root);
  /* As Nix: a private devpts unless /dev/ptmx is already there (e.g. /dev bound from the host). The
     chroot skeleton may already hold our own /dev/ptmx -> /dev/pts/ptmx link. */
  char link[64]; ssize_t ll = readlink(path, link, sizeof link);
  int ownLink = ll == 13 && !memcmp(link, "/dev/pts/ptmx", 13);
  if (stat("/dev/pts/ptmx", &st) == 0 && (ownLink || lstat(path, &st) == -1)) {
    char pts[4096]; snprintf(pts, sizeof pts, "%s/dev/pts", root);
    if (mountOn("none", pts, "devpts", 0, "newinstance,mode=0620", 1) == 0) {
      if (!ownLink && symlink("/dev/pts/ptmx", path) == -1) fail("creating /dev/ptmx");
      snprintf(pts, sizeof pts, "%s/dev/pts/ptmx", root);
      if (chmod(pts, 0666) == -1) fail("changing mode of /dev/pts/ptmx");
    } else {
      if (errno != EINVAL) fail("mounting /dev/pts");
      struct bind b1 = { "/dev/pts", "/dev/pts", 0, 0, 0 }, b2 = { "/dev/ptmx", "/dev/ptmx", 0, 0, 0 };
      if (ownLink) unlink(path);
      errno = 0; doBind(&b1); doBind(&b2);
    }
  }
  errno = 0;
  if (chdir(root) == -1) fail("cannot change directory to '%s'", root);
  /* pivot_root(".", ".") stacks the old root on top of the new one; detaching it leaves the chroot as
     "/". Same result as Nix's real-root directory without creating and removing a directory on disk. */
  if (syscall(SYS_pivot_root, ".", ".") == -1) fail("cannot pivot into '%s'", root);
  if (umount2(".", MNT_DETACH) == -1) fail("cannot unmount real root filesystem");
  if (chdir("/") == -1) fail("cannot change directory to the new root");
  if (setgid(gidIn) == -1) fail("setgid failed");
  if (setuid(uidIn) == -1) fail("setuid failed");
  if (chdir(buildDir) == -1) fail("changing into '%s'", buildDir);

  if (linux32 && personality(PER_LINUX32) == -1) fail("cannot set i686-linux personality");
  int cur = personality(0xffffffff);
  if (cur != -1) personality(cur | ADDR_NO_RANDOMIZE);
  struct rlimit limit = { 0, RLIM_INFINITY };
  setrlimit(RLIMIT_CORE, &limit);
  umask(022);
  if (prog && !seccompInherited) {
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == -1) fail("setting no_new_privs");
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, prog) == -1) fail("unable to load seccomp BPF program");
  }
  /* Close everything but stdio and the error pipe (close-on-exec). */
  int ep = errPipe[1];
  if (ep > 3 && syscall(SYS_close_range, 3, ep - 1, 0) == 0 && syscall(SYS_close_range, ep + 1, ~0U, 0) == 0) {}
  else if (ep == 3 && syscall(SYS_close_range, 4, ~0U, 0) == 0) {}
  else for (int fd = 3; fd < 1024; fd++) if (fd != ep) close(fd);
  /* Dispositions are the defaults but for SIGPIPE (main() and server() see to it); unblock everything. */
  signal(SIGPIPE, SIG_DFL);
  sigset_t none; sigemptyset(&none); sigprocmask(SIG_SETMASK, &none, 0);
  errno = 0;
  execve(argv[0], argv + 1, environ);
  fail("executing '%s'", argv[0]);
}

static const char *buildId; /* server mode: prefix of status lines */
static struct sock_filter filter[4096];
static struct sock_fprog prog = { 0, filter };
static int haveProg;

static void status(const char *fmt, ...) {
  char buf[4400]; int n = 0;
  if (buildId) n = snprintf(buf, sizeof buf, "%s ", buildId);
  va_list ap; va_start(ap, fmt);
  n += vsnprintf(buf + n, sizeof buf - n, fmt, ap);
  va_end(ap);
  if (statusFd >= 0 && write(statusFd, buf, n) < 0) {}
}

/* Server mode: a sandboxed build's output goes on the status channel (the server's stdout, shared by
   every build process) as records "ID out LEN\n" and LEN bytes. A record is one write of at most
   OUTPUT_RECORD_MAX bytes, which the kernel queues whole (a Unix stream socket queues a write of up to
   tens of kB as one buffer), so the records of concurrent builds never interleave, as their status lines
   do not. After the builder's output, its status: in order, on the same channel. */
enum { OUTPUT_RECORD_MAX = 4096 };
static void outputRecord(const char *data, size_t len) {
  char rec[OUTPUT_RECORD_MAX];
  int h = snprintf(rec, sizeof rec, "%s out %zu\n", buildId, len);
  if (h < 0 || (size_t) h + len > sizeof rec) _exit(125);
  memcpy(rec + h, data, len);
  for (;;) {
    ssize_t w = write(statusFd, rec, h + len);
    if (w >= 0 || errno != EINTR) break;
  }
}

/* Parse build options; returns the index of the builder path. */
static int parseArgs(int argc, char **argv, int i) {
  for (; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--")) { i++; break; }
    else if (!strcmp(a, "--root") && i + 1 < argc) root = argv[++i];
    else if (!strcmp(a, "--uid") && i + 1 < argc) uidIn = atoi(argv[++i]);
    else if (!strcmp(a, "--gid") && i + 1 < argc) gidIn = atoi(argv[++i]);
    else if (!strcmp(a, "--net")) keepNet = 1;
    else if (!strcmp(a, "--linux32")) linux32 = 1;
    else if (!strcmp(a, "--no-seccomp")) haveProg = 0;
    else if (!strcmp(a, "--build-dir") && i + 1 < argc) buildDir = argv[++i];
    else if (!strcmp(a, "--store-dir") && i + 1 < argc) storeDir = argv[++i];
    else if (!strcmp(a, "--real-store-dir") && i + 1 < argc) realStoreDir = argv[++i];
    else if (!strcmp(a, "--output") && i + 1 < argc) {
      /* Past the first 64, outputs are left for the caller to move (moveOutputsOut). */
      ++i;
      if (noutputs < (int)(sizeof outputs / sizeof *outputs)) outputs[noutputs++] = argv[i];
      else tooManyOutputs = 1;
    }
    else if (!strcmp(a, "--recycle-to") && i + 1 < argc) recycleTo = argv[++i];
    else if (!strcmp(a, "--skeleton-spec") && i + 1 < argc) skeletonSpec = argv[++i];
    else if (!strcmp(a, "--skeleton-files") && i + 1 < argc) skeletonFiles = argv[++i];
    else if (!strcmp(a, "--skeleton-mounts") && i + 1 < argc) skeletonMounts = argv[++i];
    else if (!strcmp(a, "--shm-size") && i + 1 < argc) shmSize = argv[++i];
    else if (!strcmp(a, "--seccomp-fd") && i + 1 < argc) seccompFd = atoi(argv[++i]);
    else if (!strcmp(a, "--status-fd") && i + 1 < argc) statusFd = atoi(argv[++i]);
    else if (!strncmp(a, "--bind", 6) && i + 2 < argc && nbinds < 4096) {
      struct bind *b = &binds[nbinds++];
      b->ro = strstr(a, "-ro") != 0; b->optional = strstr(a, "-try") != 0; b->link = strstr(a, "-link") != 0;
      b->src = argv[++i]; b->dst = argv[++i];
    } else { errno = 0; fail("bad argument '%s'", a); }
  }
  return i;
}

static void readSeccomp(void) {
  if (seccompFd < 0) return;
  size_t got = 0; ssize_t n;
  while ((n = read(seccompFd, (char *) filter + got, sizeof filter - got)) > 0) got += n;
  if (n < 0 || got % sizeof(struct sock_filter)) fail("reading the seccomp program");
  close(seccompFd); seccompFd = -1;
  prog.len = got / sizeof(struct sock_filter); haveProg = prog.len > 0;
}

static int ptyMaster = -1, ptySlave = -1;
static pid_t builderPid;

/* Start fn(arg) as a child on its own stack in our memory (CLONE_VM | CLONE_VFORK, as posix_spawn does):
   no page-table copy, and we are suspended until it has exec'd or exited. fn must write only its own
   stack and what arg points to. extraFlags: more clone flags (CLONE_FILES: it opens descriptors for us).
   -1 with errno on failure. */
static pid_t vforkOnStack(int (*fn)(void *), void *arg, int extraFlags) {
  enum { STACK = 512 * 1024 };
  static char *stack;
  if (!stack) {
    void *s = mmap(0, STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (s == MAP_FAILED) return -1;
    stack = s;
  }
  return clone(fn, stack + STACK, CLONE_VM | CLONE_VFORK | SIGCHLD | extraFlags, arg);
}

/* Server mode: private network namespaces kept and reused by later builds, when a reused one is
   indistinguishable from a fresh one (making one and the kernel's asynchronous teardown of it are the
   largest kernel cost of a sandboxed build). The server makes them in a user namespace of its own
   (netUserNs: our uid and gid mapped to themselves), each with loopback up; a build process joins its
   own (setns: user namespace, then network namespace) and then unshares the rest, so the build's user
   namespace is a child of netUserNs and the builder has no capability over the network namespace. After
   the build (its PID 1 reaped, so every process of it is dead), the build process exits 0 only if the
   namespace shows no trace of it (netClean); the server then returns it to the pool, and otherwise
   closes it. A namespace is used by one build at a time. Run as root, the builder is the host's uid 0,
   which the kernel lets write the namespace's sysctls (they check that uid, not capabilities): /proc/sys
   is read-only to it then (procReadOnly). */
struct netSlot {
  int fd;
  pid_t user; /* the build process using it, 0 if free, -1 if reserved */
  char *counters; /* its protocol counters when it was made (netCounters) */
  int countersLen;
};
static struct netSlot *netSlots;
static size_t nNetSlots, capNetSlots;
static int netUserNs = -1, netPoolOff;
static int netFd = -1; /* per-build process: the pooled namespace to join */
static const char *netCountersMade; /* per-build process: its counters when it was made */
static int netCountersMadeLen;

/* A file under dir into buf (NUL-terminated): its length, or -1 with errno. An IPv6 file (name ending
   in 6 or starting with ip6) that does not exist, as without IPv6, reads as empty. */
static int readAt(int dir, const char *name, char *buf, size_t size) {
  int fd = openat(dir, name, O_RDONLY | O_CLOEXEC);
  int ipv6 = name[strlen(name) - 1] == '6' || !strncmp(name, "ip6", 3);
  if (fd < 0 && errno == ENOENT && ipv6) { buf[0] = 0; return 0; }
  if (fd < 0) return -1;
  size_t got = 0; ssize_t n = 0;
  while (got < size - 1 && (n = read(fd, buf + got, size - 1 - got)) > 0) got += n;
  close(fd);
  buf[got] = 0;
  return n < 0 ? -1 : (int) got;
}

/* A network namespace's protocol counters, as text (dir: its /proc/PID/net): the length, or -1 if they
   cannot be read or do not fit. Some change with no packet and no socket left (an unroutable connect()
   counts in Ip's OutNoRoutes). */
enum { NET_COUNTERS_MAX = 65536 };
static int netCounters(int dir, char *buf) {
  static const char *const files[] = { "snmp", "snmp6", "netstat" };
  int len = 0;
  for (size_t k = 0; k < sizeof files / sizeof *files; k++) {
    int n = readAt(dir, files[k], buf + len, NET_COUNTERS_MAX - len);
    if (n < 0 || len + n >= NET_COUNTERS_MAX - 1) return -1;
    len += n;
  }
  return len;
}

struct netMake { int userNs, net; char *counters; int countersLen; };

/* Started by vforkOnStack() with CLONE_FILES: the descriptors it opens are the server's. */
static int netMakeChild(void *arg) {
  struct netMake *m = arg;
  const char *what;
  if (m->userNs >= 0) {
    if (setns(m->userNs, CLONE_NEWUSER) == -1) return 1;
  } else {
    char map[64];
    unsigned uid = getuid(), gid = getgid();
    if (unshare(CLONE_NEWUSER) == -1) return 1;
    snprintf(map, sizeof map, "%u %u 1", uid, uid);
    if (putFile("/proc/self/uid_map", map) == -1 || putFile("/proc/self/setgroups", "deny") == -1) return 1;
    snprintf(map, sizeof map, "%u %u 1", gid, gid);
    if (putFile("/proc/self/gid_map", map) == -1) return 1;
    m->userNs = open("/proc/self/ns/user", O_RDONLY | O_CLOEXEC);
    if (m->userNs < 0) return 1;
  }
  if (unshare(CLONE_NEWNET) == -1 || loopbackUp(&what) == -1) return 1;
  int dir = open("/proc/self/net", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) return 1;
  m->countersLen = netCounters(dir, m->counters);
  close(dir);
  m->net = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
  return 0;
}

/* A free pooled namespace, reserved, or a new one; -1 (a fresh namespace per build) if the pool is off
   or a namespace cannot be made, which turns the pool off. */
static int netAcquire(void) {
  if (netPoolOff) return -1;
  for (size_t k = 0; k < nNetSlots; k++) if (!netSlots[k].user) { netSlots[k].user = -1; return (int) k; }
  if (nNetSlots == capNetSlots) {
    struct netSlot *n = realloc(netSlots, (capNetSlots + 8) * sizeof *n);
    if (!n) return -1;
    netSlots = n; capNetSlots += 8;
  }
  struct netMake m = { netUserNs, -1, malloc(NET_COUNTERS_MAX), -1 };
  if (!m.counters) return -1;
  pid_t pid = vforkOnStack(netMakeChild, &m, CLONE_FILES);
  int st = -1;
  if (pid > 0) while (waitpid(pid, &st, 0) == -1 && errno == EINTR) {}
  if (netUserNs < 0) netUserNs = m.userNs;
  if (pid <= 0 || st != 0 || m.net < 0 || netUserNs < 0 || m.countersLen < 0) {
    if (m.net >= 0) close(m.net);
    free(m.counters);
    netPoolOff = 1;
    return -1;
  }
  char *counters = realloc(m.counters, m.countersLen + 1);
  netSlots[nNetSlots] = (struct netSlot) { m.net, -1, counters ? counters : m.counters, m.countersLen };
  return (int) nNetSlots++;
}

/* After fork(): the slot is the child's (pid > 0), or free again (the fork failed). */
static void netAssign(int slot, pid_t pid) {
  if (slot >= 0) netSlots[slot].user = pid > 0 ? pid : 0;
}

/* In a new build process: only its own namespace (slot, or none) stays open. */
static void netKeepOnly(int slot) {
  for (size_t k = 0; k < nNetSlots; k++) if ((int) k != slot) close(netSlots[k].fd);
  netFd = slot >= 0 ? netSlots[slot].fd : -1;
  if (slot >= 0) { netCountersMade = netSlots[slot].counters; netCountersMadeLen = netSlots[slot].countersLen; }
  if (netFd < 0 && netUserNs >= 0) { close(netUserNs); netUserNs = -1; }
}

/* A build process ended: its namespace goes back to the pool if it exited 0 (clean), else is closed;
   if it could not join it (exit 2), later builds make their own. */
static void netReaped(pid_t pid, int st) {
  for (size_t k = 0; k < nNetSlots; k++) {
    if (netSlots[k].user != pid) continue;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) netSlots[k].user = 0;
    else { close(netSlots[k].fd); free(netSlots[k].counters); netSlots[k] = netSlots[--nNetSlots]; }
    if (WIFEXITED(st) && WEXITSTATUS(st) == 2) netPoolOff = 1;
    return;
  }
}

/* In the build process, before the other namespaces: join the pooled network namespace, if any. */
static int netJoinFailed;
static void netJoin(void) {
  if (netFd < 0) return;
  netJoined = setns(netUserNs, CLONE_NEWUSER) == 0 && setns(netFd, CLONE_NEWNET) == 0;
  netJoinFailed = !netJoined;
  close(netUserNs); close(netFd);
  netUserNs = netFd = -1;
  errno = 0;
}

static int netDir = -1; /* the build process's /proc/PID/net (its root is the build's once PID 1 pivots) */

/* Whether every "inuse N" and "tw N" of a sockstat file is 0 (sockets open, in TIME_WAIT). */
static int noSockets(const char *text) {
  for (const char *p = text; (p = strpbrk(p, "it")); p++) {
    const char *v = !strncmp(p, "inuse ", 6) ? p + 6 : !strncmp(p, "tw ", 3) && p > text && p[-1] == ' ' ? p + 3 : 0;
    if (v && *v != '0') return 0;
  }
  return 1;
}

/* Whether a table (a header line, then one line per entry) has no entry. */
static int noEntries(const char *text) {
  const char *nl = strchr(text, '\n');
  return !nl || !nl[1];
}

/* The pooled namespace after the build: no socket left of any kind, no IPv6 flow label (one outlives
   its socket for a while), not a packet through loopback, and its protocol counters as when it was made. */
static int netClean(void) {
  static char buf[NET_COUNTERS_MAX];
  if (netDir < 0) return 0;
  if (readAt(netDir, "sockstat", buf, sizeof buf) <= 0 || !noSockets(buf)) return 0;
  if (readAt(netDir, "sockstat6", buf, sizeof buf) < 0 || !noSockets(buf)) return 0;
  if (readAt(netDir, "unix", buf, sizeof buf) <= 0 || !noEntries(buf)) return 0;
  if (readAt(netDir, "ip6_flowlabel", buf, sizeof buf) < 0 || !noEntries(buf)) return 0;
  if (readAt(netDir, "dev", buf, sizeof buf) <= 0) return 0;
  char *lo = strstr(buf, " lo:");
  if (!lo) return 0;
  /* Only lo exists (the builder cannot make interfaces): its line is the last, all counters 0. */
  for (char *p = lo + 4; *p && *p != '\n'; p++) if (*p != ' ' && *p != '0') return 0;
  int n = netCounters(netDir, buf);
  return n >= 0 && n == netCountersMadeLen && !memcmp(buf, netCountersMade, n);
}

/* A build process's exit code in server mode: 0 exactly when its pooled namespace may be reused, 2 if
   it could not join it (see netReaped). */
static int netExitCode(void) {
  return netJoinFailed ? 2 : netJoined && netClean() ? 0 : 1;
}

/* A number in a /proc/sys file, or -1. */
static long procSysNumber(const char *path) {
  char buf[32];
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = 0;
  char *end;
  long v = strtol(buf, &end, 10);
  return end == buf || v < 0 ? -1 : v;
}

/* The ids an owner not mapped into a user namespace shows as there (kernel.overflowuid/gid, 65534 unless
   changed), read once: by the server before it forks build processes, else by prepare(). */
static void overflowIds(void) {
  if (overflowUid != -2) return;
  overflowUid = procSysNumber("/proc/sys/kernel/overflowuid");
  overflowGid = procSysNumber("/proc/sys/kernel/overflowgid");
  errno = 0;
}

/* Pseudoterminal, namespaces, uid/gid maps and nsSetup(), in this (per-build) process. The builder's
   process is made by launch(): the first child after unshare(CLONE_NEWPID) is PID 1 of the new namespace. */
static void prepare(void) {
  /* The builder's output goes to a pseudoterminal in raw mode, as in Nix; we copy it to our stdout. */
  int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (master < 0) fail("opening pseudoterminal master");
  if (grantpt(master) || unlockpt(master)) fail("unlocking pseudoterminal");
  int slave = open(ptsname(master), O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (slave < 0) fail("opening pseudoterminal slave");
  struct termios term;
  if (tcgetattr(slave, &term)) fail("getting pseudoterminal attributes");
  cfmakeraw(&term);
  if (tcsetattr(slave, TCSANOW, &term)) fail("putting pseudoterminal into raw mode");

  uid_t hostUid = getuid(); gid_t hostGid = getgid();
  skIds = (struct skeletonIds) { uidIn, hostUid, gidIn, hostGid };
  if (recycleTo) overflowIds();
  hostRoot = hostUid == 0;
  if (hostUid == 0) setgroups(0, 0);
  if (!keepNet) netJoin();
  int flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | (keepNet || netJoined ? 0 : CLONE_NEWNET);
  if (unshare(flags) == -1) fail("creating namespaces (unshare)");
  if (netJoined) netDir = open("/proc/self/net", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  char map[64];
  snprintf(map, sizeof map, "%d %d 1", uidIn, hostUid); writeFile("/proc/self/uid_map", map);
  writeFile("/proc/self/setgroups", "deny");
  snprintf(map, sizeof map, "%d %d 1", gidIn, hostGid); writeFile("/proc/self/gid_map", map);
  nsSetup();
  ptyMaster = master; ptySlave = slave;
}

/* PID 1 of the build, started by vforkOnStack(): no page-table copy, and its exec tears down no copied
   address space; its failure is on errPipe. */
static int builderMain(void *cmd) {
  if (setsid() == -1) fail("creating a new session");
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) == -1) fail("setting the parent-death signal");
  if (dup2(ptySlave, 2) == -1 || dup2(2, 1) == -1) fail("redirecting output");
  int null = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null < 0 || dup2(null, 0) == -1) fail("opening /dev/null");
  childLate(cmd, haveProg ? &prog : 0);
  return 125;
}

/* See openStoreDirs; and the root's ctime before the builder starts: any change it makes sets a ctime at or
   after this one. */
static void openSkeleton(void) {
  char parent[4096];
  const char *slash = strrchr(root, '/');
  if (!slash || slash == root || (size_t) (slash - root) >= sizeof parent) return;
  memcpy(parent, root, slash - root);
  parent[slash - root] = 0;
  struct stat st;
  chrootRootFd = open(root, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  chrootParentFd = open(parent, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (chrootRootFd >= 0 && chrootParentFd >= 0 && fstat(chrootRootFd, &st) == 0) {
    placedNs = ns(st.st_ctim);
    chrootDev = st.st_dev; chrootIno = st.st_ino;
  } else placedNs = 0;
  errno = 0;
}

/* The chroot's store dir and the real one, and for a skeleton to recycle the chroot's root and the
   directory it is in, opened before the builder mounts and pivots (our root becomes the chroot's then, and
   what is mounted in the chroot is mounted on top of what these were opened on): the outputs are moved
   and the skeleton is checked and renamed through these, never by a path from our root. */
static void openStoreDirs(void) {
  char path[8192];
  if (recycleTo && storeDir) openSkeleton();
  if (!noutputs || !realStoreDir || !storeDir) return;
  snprintf(path, sizeof path, "%s%s", root, storeDir);
  chrootStoreFd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
  realStoreFd = open(realStoreDir, O_PATH | O_DIRECTORY | O_CLOEXEC);
  errno = 0;
}

/* Our effective capabilities (those of the build's user namespace, which would override the permissions of
   the caller's own files there) set aside, *saved what they were; 0, or -1 if they could not be. */
static int capsAside(struct __user_cap_data_struct saved[2]) {
  struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
  struct __user_cap_data_struct none[2];
  if (syscall(SYS_capget, &hdr, saved) == -1) return -1;
  memcpy(none, saved, sizeof none);
  none[0].effective = none[1].effective = 0;
  return syscall(SYS_capset, &hdr, none) == -1 ? -1 : 0;
}

static void capsBack(struct __user_cap_data_struct saved[2]) {
  struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
  syscall(SYS_capset, &hdr, saved);
}

/* Once every process of the build is gone: each output the builder made is renamed to the real store dir
   (replacing a file or an empty directory there, as rename does); the caller moves what is left, which
   outputsLeft says there may be. */
static void moveOutputsOut(void) {
  outputsLeft = noutputs > 0;
  if (chrootStoreFd < 0 || realStoreFd < 0) return;
  /* The renames are made with the caller's rights alone: this process's capabilities in its user namespace
     would override the permissions of the caller's own files (a store dir made read-only, say), where the
     caller's rename fails. The effective set is emptied around them and then put back. */
  struct __user_cap_data_struct caps[2];
  if (capsAside(caps) == -1) return;
  int left = 0;
  for (int i = 0; i < noutputs; i++) {
    if (renameat(chrootStoreFd, outputs[i], realStoreFd, outputs[i]) == 0) continue;
    /* Not made (ENOENT, and not there: a real store dir gone is ENOENT too), or left. */
    struct stat st;
    if (errno != ENOENT || fstatat(chrootStoreFd, outputs[i], &st, AT_SYMLINK_NOFOLLOW) == 0) left = 1;
  }
  capsBack(caps);
  outputsLeft = left || tooManyOutputs;
  errno = 0;
}

/* A '/'-separated list of names made NUL-separated in place (names hold no '/'); its length. */
static size_t nulSeparated(char *list) {
  size_t n = strlen(list);
  for (size_t k = 0; k < n; k++) if (list[k] == '/') list[k] = 0;
  return n;
}

static int hexDigit(char c) {
  return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif

/* The chroot `name` renamed to `to` (both in chrootParentFd): 1 only when `name` is still the inode the
   check saw (chrootRootFd: something with the caller's rights could have put another directory in its
   place) and nothing is at `to` (a plain rename would replace an empty directory there). */
static int renameChecked(const char *name, const char *to) {
  struct stat st;
  if (fstatat(chrootParentFd, name, &st, AT_SYMLINK_NOFOLLOW) == -1 || st.st_dev != chrootDev || st.st_ino != chrootIno) return 0;
  return syscall(SYS_renameat2, chrootParentFd, name, chrootParentFd, to, RENAME_NOREPLACE) == 0;
}

/* Once every process of the build is gone and every output is out of the chroot: the pooled skeleton
   (--recycle-to) is checked, with the caller's rights alone, through the root opened before the builder
   started (skeletonCheckAt: the build's files unlinked from its store dir, reached without following a
   symlink, then every inode compared), and renamed, unchanged, to its name in the pool (renameChecked): 1.
   Else it stays where it is (the caller discards it): 0. */
static int recycleSkeleton(void) {
  if (!recycleTo || !skeletonSpec || chrootRootFd < 0 || chrootParentFd < 0 || !placedNs || outputsLeft || strchr(recycleTo, '/')) return 0;
  /* An owner not mapped into the namespace shows as the overflow id: ours as seen there must not be that
     one (nor is any skeleton kept when it cannot be read). */
  if (overflowUid < 0 || overflowGid < 0 || skIds.uidSeen == overflowUid || skIds.gidSeen == overflowGid) return 0;
  size_t hexLen = strlen(skeletonSpec);
  unsigned char *spec = hexLen % 2 ? 0 : malloc(hexLen / 2 + 1);
  if (!spec) return 0;
  for (size_t k = 0; k < hexLen / 2; k++) {
    int hi = hexDigit(skeletonSpec[2 * k]), lo = hexDigit(skeletonSpec[2 * k + 1]);
    if (hi < 0 || lo < 0) { free(spec); return 0; }
    spec[k] = (unsigned char) (hi << 4 | lo);
  }
  struct reader r = { spec, spec + hexLen / 2 };
  char *files = (char *) skeletonFiles, *mounts = (char *) skeletonMounts;
  size_t filesLen = nulSeparated(files), mountsLen = nulSeparated(mounts);
  const char *name = strrchr(root, '/') + 1; /* (openSkeleton) */
  /* The inputs mounted on the build's files in the store dir make them mount points in our namespace,
     which cannot be unlinked (EBUSY): when there are such files, the store dir's mounts go first (about 50
     us: the kernel waits for an RCU grace period), by its path from our root, which is the chroot's since
     the pivot (nothing of the host is reachable by a path any more: whatever the builder made of that path,
     this can only unmount something of this namespace, which ends with us; and a file still covered is not
     unlinked, so the skeleton is not kept). Directory inputs' mount points stay: nothing to unmount then. */
  if (filesLen && umount2(storeDir, MNT_DETACH | UMOUNT_NOFOLLOW) == -1) errno = 0;
  struct __user_cap_data_struct caps[2];
  int kept = 0;
  if (capsAside(caps) == 0) {
    kept = skeletonCheckAt(chrootRootFd, &r, storeDir + strspn(storeDir, "/"), files, filesLen, mounts, mountsLen, placedNs, &skIds) &&
           renameChecked(name, recycleTo);
    capsBack(caps);
  }
  free(spec);
  errno = 0;
  return kept;
}

static void launch(char **cmd) {
  openStoreDirs();
  if (pipe2(errPipe, O_CLOEXEC) == -1) fail("creating a pipe");
  pid_t pid = vforkOnStack(builderMain, cmd, 0);
  int e = errno;
  close(ptySlave); close(errPipe[1]); errPipe[1] = 0;
  errno = e;
  if (pid == -1) fail("forking the builder");
  builderPid = pid;
}

/* Wait for the builder: setup errors, its output (copied to stdout), its status. */
static int finish(void) {
  char errbuf[4096]; size_t errlen = 0; ssize_t n;
  while ((n = read(errPipe[0], errbuf + errlen, sizeof errbuf - 1 - errlen)) > 0) errlen += n;
  close(errPipe[0]);
  if (errlen) {
    errbuf[errlen] = 0;
    waitpid(builderPid, 0, 0);
    errno = 0;
    if (statusFd >= 0) { status("error %s\n", errbuf); _exit(125); }
    fail("%s", errbuf);
  }
  /* The sandbox is set up and the builder runs: Node announces the build now (Nix prints "building"
     only once its child has set up the sandbox). Our pid (Node kills our process group on abort) comes
     with it, in the same write: a record of its own read a moment before cost Node a wake-up per build. */
  if (buildId) status("pid %d\n%s started\n", (int) getpid(), buildId);

  /* Server mode: each read goes out as one record on the status channel (see outputRecord), so a
     read takes no more than a record holds. */
  char buf[65536];
  size_t most = buildId ? OUTPUT_RECORD_MAX - 128 : sizeof buf;
  for (;;) {
    n = read(ptyMaster, buf, most);
    if (n > 0) {
      if (buildId) { outputRecord(buf, n); continue; }
      for (ssize_t off = 0; off < n;) {
        ssize_t w = write(1, buf + off, n - off);
        if (w < 0) { if (errno == EINTR) continue; break; }
        off += w;
      }
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    break; /* EIO: every holder of the slave closed it */
  }
  /* As Nix: the end of the output is the end of the build. A builder that closed its output and runs on
     is killed (its status then says so); one that has exited is a zombie, which the signal leaves be. */
  kill(builderPid, SIGKILL);
  int st;
  while (waitpid(builderPid, &st, 0) == -1 && errno == EINTR) {}
  /* PID 1 is reaped once every other process of its namespace is: nothing of the build runs any more. */
  moveOutputsOut();
  /* Server mode: Node looks for outputs left in the chroot only after this record. */
  if (buildId && outputsLeft) status("left\n");
  /* "kept" comes in the same write as the status that ends the build (a record of its own could cost Node a
     wake-up of its event loop). */
  const char *kept = recycleSkeleton() ? "kept\n" : "", *id = buildId ? buildId : "", *sp = buildId ? " " : "";
  if (WIFEXITED(st)) status("%s%s%sexit %d\n", kept, *kept ? id : "", *kept ? sp : "", WEXITSTATUS(st));
  else status("%s%s%ssignal %d\n", kept, *kept ? id : "", *kept ? sp : "", WTERMSIG(st));
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void checkCommand(char **cmd) {
  if (!root || !cmd[0] || !cmd[1]) { errno = 0; fail("usage: helper --root DIR [options] -- BUILDER ARGV0 [ARGS...]"); }
}

static int runBuild(char **cmd) {
  checkCommand(cmd);
  prepare();
  launch(cmd);
  return finish();
}

/* Read one request frame (4-byte little-endian length, then the payload); NULL at end of input. */
static char *readFrame(int fd, uint32_t *lenOut) {
  unsigned char lenb[4];
  size_t got = 0; ssize_t n;
  while (got < 4 && ((n = read(fd, lenb + got, 4 - got)) > 0 || (n < 0 && errno == EINTR))) if (n > 0) got += n;
  if (got < 4) return 0;
  uint32_t len = lenb[0] | lenb[1] << 8 | lenb[2] << 16 | (uint32_t) lenb[3] << 24;
  char *msg = malloc(len + 1);
  if (!msg) return 0;
  got = 0;
  while (got < len && ((n = read(fd, msg + got, len - got)) > 0 || (n < 0 && errno == EINTR))) if (n > 0) got += n;
  if (got < len) { free(msg); return 0; }
  msg[len] = 0;
  *lenOut = len;
  return msg;
}

/* Split a request (id, argument count, arguments, environment; NUL-terminated strings) into a
   NULL-terminated array; returns the number of strings, or -1 if malformed. */
static int splitRequest(char *msg, uint32_t len, char ***out) {
  int nstr = 0;
  for (uint32_t k = 0; k < len; k++) if (!msg[k]) nstr++;
  char **strs = calloc(nstr + 2, sizeof(char *));
  if (!strs) return -1;
  int si = 0; char *p = msg;
  while (p < msg + len && si < nstr) { strs[si++] = p; p += strlen(p) + 1; }
  int argc = si >= 2 ? atoi(strs[1]) : -1;
  if (argc < 0 || 2 + argc > si) { free(strs); return -1; }
  strs[si] = 0;
  *out = strs;
  return si;
}

/* A split request's build options parsed into our globals and its environment made the builder's;
   returns the builder command (BUILDER ARGV0 ARGS...). */
static char **requestCommand(char **strs) {
  int argcB = atoi(strs[1]);
  char **argvB = calloc(argcB + 2, sizeof(char *));
  if (!argvB) fail("out of memory");
  argvB[0] = "helper";
  for (int k = 0; k < argcB; k++) argvB[k + 1] = strs[2 + k];
  environ = strs + 2 + argcB;
  return argvB + parseArgs(argcB + 1, argvB, 1);
}

/* Server mode: "helper --server [--warm] [--seccomp-fd 3]". Requests arrive on stdin as a 4-byte
   little-endian length and NUL-terminated strings: id, argument count, arguments, environment.
   Status lines "id exit N", "id signal N", "id error MSG" go to our stdout.
   - A sandboxed build runs in a forked process that sets up the namespaces and reports on our stdout
     (shared by all): once its builder runs, "id pid PID" (the process whose group to kill on abort) and
     "id started" in one write, the builder's output as records "id out LEN" + LEN bytes (see
     outputRecord), then its status; it dies with us (parent-death signal).
   - A plain build ("--plain CWD FILE ARGV0 ARGS...", no sandbox) is started by us straight into the
     builder: new session, cwd, stdin /dev/null, stdout and stderr on one end of a Unix socket pair whose
     other end we read, exactly the environment given. We report "id pid PID" (Node kills its process
     group on abort) or "error MSG" if the exec failed; its output as records (see outputRecord); at the
     end of its output, we kill its process group (as Nix: what it left running ends with the build);
     once it is reaped too, "exit"/"signal", after all of its output.
   We exit when stdin closes or our parent dies. */
struct plain { pid_t pid; int out, reaped, status; char *id; };
static struct plain *plains;
static size_t nplains, capPlains;

/* A plain build whose output ended and which was reaped: its status, after all its output records. */
static void plainMaybeDone(size_t k) {
  struct plain *b = &plains[k];
  if (b->out >= 0 || !b->reaped) return;
  buildId = b->id;
  if (WIFEXITED(b->status)) status("exit %d\n", WEXITSTATUS(b->status));
  else status("signal %d\n", WTERMSIG(b->status));
  buildId = 0;
  free(b->id);
  plains[k] = plains[--nplains];
}

static void reapAll(void) {
  int st; pid_t pid;
  while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
    netReaped(pid, st);
    for (size_t k = 0; k < nplains; k++) {
      if (plains[k].pid != pid) continue;
      plains[k].reaped = 1; plains[k].status = st;
      plainMaybeDone(k);
      break;
    }
  }
}

/* Read what a plain builder wrote (one record per read); at the end of its output, kill its process group. */
static void plainOutput(size_t k) {
  struct plain *b = &plains[k];
  char buf[OUTPUT_RECORD_MAX - 128];
  ssize_t n;
  buildId = b->id;
  /* A few reads at most, so that a builder writing without pause does not hold up the other builds. */
  for (int reads = 0; reads < 16 && (n = read(b->out, buf, sizeof buf)) > 0; reads++) {
    outputRecord(buf, n);
    if ((size_t) n < sizeof buf) break; /* likely drained: back to poll rather than a read that would block */
  }
  buildId = 0;
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (n > 0) return;
  /* As Nix: the end of a builder's output is the end of its build. A builder still running (it closed its
     output) is killed with its group; one that has exited is a zombie, which the signal leaves be. */
  close(b->out); b->out = -1;
  kill(-b->pid, SIGKILL);
  plainMaybeDone(k);
}

/* The child of a plain build, started by vforkOnStack(); it reports a failure on the error pipe. */
struct plainStart { const char *cwd, *file; char **argv, **env; int errFd, outFd; };

static int plainChild(void *arg) {
  const struct plainStart *a = arg;
  char msg[4400]; int n;
  /* The server's dispositions are the defaults but for SIGPIPE (see server()); the mask is all it blocks. */
  signal(SIGPIPE, SIG_DFL);
  sigset_t none; sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, 0);
  if (setsid() == -1) { n = snprintf(msg, sizeof msg, "creating a new session: %s", strerror(errno)); goto err; }
  int null = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null < 0) { n = snprintf(msg, sizeof msg, "opening /dev/null: %s", strerror(errno)); goto err; }
  if (chdir(a->cwd) == -1) { n = snprintf(msg, sizeof msg, "changing into '%s': %s", a->cwd, strerror(errno)); goto err; }
  if (dup2(null, 0) == -1 || dup2(a->outFd, 1) == -1 || dup2(a->outFd, 2) == -1) { n = snprintf(msg, sizeof msg, "redirecting stdio: %s", strerror(errno)); goto err; }
  /* Everything else is closed on exec (the error pipe too). */
  if (syscall(SYS_close_range, 3, ~0U, 4 /* CLOSE_RANGE_CLOEXEC */) == -1)
    for (int fd = 3; fd < 1024; fd++) if (fd != a->errFd) fcntl(fd, F_SETFD, FD_CLOEXEC);
  execve(a->file, a->argv, a->env);
  n = snprintf(msg, sizeof msg, "executing '%s': %s", a->file, strerror(errno));
err:
  if (write(a->errFd, msg, n) < 0) {}
  _exit(127);
}

/* argv: CWD FILE ARGV0 ARGS...; env: NULL-terminated. */
static void plainBuild(const char *id, char **argv, char **env) {
  buildId = id;
  int ep[2], sp[2];
  if (pipe2(ep, O_CLOEXEC) == -1) { status("error creating a pipe: %s\n", strerror(errno)); buildId = 0; return; }
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == -1) {
    status("error creating a socket pair: %s\n", strerror(errno)); close(ep[0]); close(ep[1]); buildId = 0; return;
  }
  struct plainStart start = { argv[0], argv[1], argv + 2, env, ep[1], sp[1] };
  pid_t pid = vforkOnStack(plainChild, &start, 0);
  close(ep[1]); close(sp[1]);
  if (pid == -1) { status("error forking: %s\n", strerror(errno)); close(ep[0]); close(sp[0]); buildId = 0; return; }
  char errbuf[4400]; size_t errlen = 0; ssize_t n;
  while ((n = read(ep[0], errbuf + errlen, sizeof errbuf - 1 - errlen)) > 0 || (n < 0 && errno == EINTR)) if (n > 0) errlen += n;
  close(ep[0]);
  if (errlen) {
    errbuf[errlen] = 0;
    close(sp[0]);
    status("error %s\n", errbuf); /* the child exits 127; reapAll finds no entry for it */
  } else {
    if (nplains == capPlains) {
      capPlains = capPlains ? capPlains * 2 : 16;
      plains = realloc(plains, capPlains * sizeof *plains);
      if (!plains) _exit(1);
    }
    fcntl(sp[0], F_SETFL, O_NONBLOCK);
    plains[nplains] = (struct plain) { pid, sp[0], 0, 0, strdup(id) };
    nplains++;
    status("pid %d\n", (int) pid);
  }
  buildId = 0;
}

/* A "warm" per-build process: its namespaces, pseudoterminal and builder process are made ahead of
   the request (the part of a build's start that does not depend on it), then it waits for a request
   on a pipe from the server and runs it like a cold one. Only for requests with the defaults it was
   made with (private network, uid 1000, gid 100). */
static int warmFd = -1, signalFd = -1;
static pid_t serverPid;
static const char *warmUid = "1000", *warmGid = "100";

static int writeAll(int fd, const void *data, size_t len) {
  for (size_t off = 0; off < len;) {
    ssize_t w = write(fd, (const char *) data + off, len - off);
    if (w < 0) { if (errno == EINTR) continue; return -1; }
    off += w;
  }
  return 0;
}

static int writeFrame(int fd, const char *msg, uint32_t len) {
  unsigned char lenb[4] = { len & 255, (len >> 8) & 255, (len >> 16) & 255, len >> 24 };
  return writeAll(fd, lenb, 4) || writeAll(fd, msg, len) ? -1 : 0;
}

/* In a per-build process: our status channel (a copy of the server's stdout, closed on exec). Our pid
   goes to Node with "started" (see finish). */
static void attachOutput(void) {
  statusFd = fcntl(1, F_DUPFD_CLOEXEC, 3);
  if (statusFd < 0) _exit(125);
}

static void perBuildInit(int netSlot) {
  /* A build process goes with the server (its sandbox with it), as Node, which knows its pid only once
     the builder runs, would kill it then. */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != serverPid) _exit(125); /* it died before that */
  netKeepOnly(netSlot);
  sigset_t none; sigemptyset(&none); sigprocmask(SIG_SETMASK, &none, 0);
  if (signalFd >= 0) close(signalFd);
  if (warmFd >= 0) close(warmFd);
  signal(SIGPIPE, SIG_DFL);
  setpgid(0, 0);
  close(0);
}

static void spawnWarm(void) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) == -1) return;
  int slot = netAcquire();
  pid_t pid = fork();
  netAssign(slot, pid);
  if (pid == -1) { close(p[0]); close(p[1]); return; }
  if (pid > 0) { close(p[0]); warmFd = p[1]; return; }
  close(p[1]);
  perBuildInit(slot);
  failQuiet = 1; statusFd = -1;
  prepare();
  failQuiet = 0; statusFd = 1;
  uint32_t len; char *msg = readFrame(p[0], &len);
  if (!msg) _exit(0);
  close(p[0]);
  char **strs;
  if (splitRequest(msg, len, &strs) < 0) _exit(125);
  buildId = strs[0];
  attachOutput();
  char **cmd = requestCommand(strs);
  checkCommand(cmd);
  launch(cmd);
  finish();
  _exit(netExitCode());
}

/* Whether a sandboxed request can go to the warm process (same network and ids it was made with). */
static int warmCompatible(char **args, int argc) {
  for (int k = 0; k < argc; k++) {
    if (!strcmp(args[k], "--")) break;
    if (!strcmp(args[k], "--net")) return 0;
    if (!strcmp(args[k], "--uid") && k + 1 < argc && strcmp(args[k + 1], warmUid)) return 0;
    if (!strcmp(args[k], "--gid") && k + 1 < argc && strcmp(args[k + 1], warmGid)) return 0;
  }
  return 1;
}

/* Whether a sandboxed request may run in a pooled network namespace: not with the host's network, nor as
   uid 0, which has every capability in the build's user namespace and so over a namespace of its own (it
   could configure it), not over a pooled one. */
static int netPoolable(char **args, int argc) {
  for (int k = 0; k < argc; k++) {
    if (!strcmp(args[k], "--")) break;
    if (!strcmp(args[k], "--net")) return 0;
    if (!strcmp(args[k], "--uid") && k + 1 < argc && !strcmp(args[k + 1], "0")) return 0;
  }
  return 1;
}

static int server(int warm) {
  serverPid = getpid();
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  /* Children are reaped from the main loop (signalfd); waiting, rather than SIG_IGN, keeps their CPU
     time in our accounting and gives us plain builds' statuses. */
  sigset_t chld; sigemptyset(&chld); sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, 0);
  signalFd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  if (signalFd < 0) return 1;
  /* main() set every disposition to its default; children reset SIGPIPE, the one we change. */
  signal(SIGPIPE, SIG_IGN);
  statusFd = 1;
  overflowIds();
  readSeccomp();
  /* If that fails, each build loads it and reports why it cannot. */
  if (haveProg && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 && prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0) seccompInherited = 1;
  if (warm) spawnWarm();
  struct pollfd *pfd = 0;
  size_t capPfd = 0;
  for (;;) {
    if (capPfd < 2 + nplains) {
      capPfd = 2 + nplains + 16;
      pfd = realloc(pfd, capPfd * sizeof *pfd);
      if (!pfd) return 1;
    }
    pfd[0] = (struct pollfd) { 0, POLLIN, 0 };
    pfd[1] = (struct pollfd) { signalFd, POLLIN, 0 };
    size_t npfd = 2;
    for (size_t k = 0; k < nplains; k++) if (plains[k].out >= 0) pfd[npfd++] = (struct pollfd) { plains[k].out, POLLIN, 0 };
    if (poll(pfd, npfd, -1) == -1) { if (errno == EINTR) continue; return 1; }
    /* Output before reaping: a build's status follows all of its output. Entries move as builds end, so
       each ready descriptor is looked up again. */
    for (size_t j = 2; j < npfd; j++) {
      if (!pfd[j].revents) continue;
      for (size_t k = 0; k < nplains; k++) if (plains[k].out == pfd[j].fd) { plainOutput(k); break; }
    }
    if (pfd[1].revents) {
      struct signalfd_siginfo si;
      while (read(signalFd, &si, sizeof si) > 0) {}
      reapAll();
      if (warm && warmFd < 0) spawnWarm();
    }
    if (!pfd[0].revents) continue;
    uint32_t len;
    char *msg = readFrame(0, &len);
    if (!msg) return 0;
    char **strs;
    int si = splitRequest(msg, len, &strs);
    if (si < 0) { free(msg); continue; }
    /* strs: id, argc, args[argc], env..., NULL */
    int argcB = atoi(strs[1]);
    char **args = strs + 2, **env = strs + 2 + argcB;
    if (argcB >= 4 && !strcmp(args[0], "--plain")) {
      char **pargv = calloc(argcB + 1, sizeof(char *));
      if (!pargv) return 1;
      for (int k = 1; k < argcB; k++) pargv[k - 1] = args[k];
      plainBuild(strs[0], pargv, env);
      free(pargv); free(strs); free(msg);
      continue;
    }
    if (warmFd >= 0 && warmCompatible(args, argcB)) {
      int ok = writeFrame(warmFd, msg, len) == 0;
      close(warmFd); warmFd = -1;
      /* the next one is made once a build process ends (see above), not while this build starts */
      if (ok) { free(strs); free(msg); continue; }
      /* that warm process had died (setup failed): run this build cold, which reports why */
    }
    int slot = netPoolable(args, argcB) ? netAcquire() : -1;
    pid_t pid = fork();
    netAssign(slot, pid);
    if (pid == -1) { buildId = strs[0]; status("error forking: %s\n", strerror(errno)); buildId = 0; free(strs); free(msg); continue; }
    if (pid > 0) { free(strs); free(msg); continue; }
    /* per-build process */
    perBuildInit(slot);
    buildId = strs[0];
    attachOutput();
    runBuild(requestCommand(strs));
    _exit(netExitCode());
  }
}

int main(int argc, char **argv) {
  for (int s = 1; s < 32; s++) if (s != SIGKILL && s != SIGSTOP) signal(s, SIG_DFL);
  if (argc >= 2 && !strcmp(argv[1], "--server")) {
    int warm = 0;
    for (int i = 2; i < argc; i++) {
      if (!strcmp(argv[i], "--warm")) warm = 1;
      else if (!strcmp(argv[i], "--seccomp-fd") && i + 1 < argc) seccompFd = atoi(argv[++i]);
    }
    return server(warm);
  }
  int i = parseArgs(argc, argv, 1);
  if (statusFd >= 0) fcntl(statusFd, F_SETFD, FD_CLOEXEC);
  readSeccomp();
  return runBuild(argv + i);
}
