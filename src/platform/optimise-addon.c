/* realise optimise addon: the per-file loop of store optimisation, with Node-API declared by hand.
 *
 * The same steps as src/store/optimise-links.cjs (see src/store/optimise.ts for what they reproduce of
 * Nix 2.8's optimise-store.cc), without a JavaScript call per system call: one optimisePath(handle, path)
 * walks a whole store path. Per file: one lstat, open/read to hash its NAR serialisation (SHA-256, here),
 * one lstat of its .links entry, then link, or link + rename. A replaced file is kept open through its
 * rename and freed by its close on one of CLOSERS threads of this addon: on a file system that discards
 * freed blocks synchronously (ext4 with `discard`), the discards then overlap each other and the work.
 * Each handle is used by one thread; they share only the closing threads.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

typedef struct napi_env__ *napi_env;
typedef struct napi_value__ *napi_value;
typedef struct napi_callback_info__ *napi_callback_info;
typedef int napi_status;
typedef napi_value (*napi_callback)(napi_env, napi_callback_info);
typedef void (*napi_finalize)(napi_env, void *, void *);
extern napi_status napi_get_cb_info(napi_env, napi_callback_info, size_t *, napi_value *, napi_value *, void **);
extern napi_status napi_get_value_string_utf8(napi_env, napi_value, char *, size_t, size_t *);
extern napi_status napi_get_typedarray_info(napi_env, napi_value, int *, size_t *, void **, napi_value *, size_t *);
extern napi_status napi_is_typedarray(napi_env, napi_value, _Bool *);
extern napi_status napi_create_external(napi_env, void *, napi_finalize, void *, napi_value *);
extern napi_status napi_get_value_external(napi_env, napi_value, void **);
extern napi_status napi_create_string_utf8(napi_env, const char *, size_t, napi_value *);
extern napi_status napi_create_double(napi_env, double, napi_value *);
extern napi_status napi_create_int32(napi_env, int, napi_value *);
extern napi_status napi_create_array(napi_env, napi_value *);
extern napi_status napi_set_element(napi_env, napi_value, unsigned, napi_value);
extern napi_status napi_get_undefined(napi_env, napi_value *);
extern napi_status napi_get_value_bool(napi_env, napi_value, _Bool *);
extern napi_status napi_create_function(napi_env, const char *, size_t, napi_callback, void *, napi_value *);
extern napi_status napi_set_named_property(napi_env, napi_value, const char *, napi_value);
extern napi_status napi_throw_error(napi_env, const char *, const char *);

/* ---- SHA-256 (FIPS 180-4) ---- */

typedef struct { uint32_t h[8]; uint64_t len; unsigned char buf[64]; size_t used; } Sha256;

static const uint32_t K[64] = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void shaBlock(Sha256 *s, const unsigned char *p) {
  uint32_t w[64];
  for (int i = 0; i < 16; i++) w[i] = (uint32_t) p[4 * i] << 24 | (uint32_t) p[4 * i + 1] << 16 | (uint32_t) p[4 * i + 2] << 8 | p[4 * i + 3];
  for (int i = 16; i < 64; i++) {
    uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
    uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
  for (int i = 0; i < 64; i++) {
    uint32_t t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
    uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
    h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
  }
  s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d; s->h[4] += e; s->h[5] += f; s->h[6] += g; s->h[7] += h;
}

static void shaInit(Sha256 *s) {
  static const uint32_t init[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 };
  memcpy(s->h, init, sizeof init);
  s->len = 0;
  s->used = 0;
}

static void shaUpdate(Sha256 *s, const void *data, size_t n) {
  const unsigned char *p = data;
  s->len += n;
  if (s->used) {
    size_t k = 64 - s->used < n ? 64 - s->used : n;
    memcpy(s->buf + s->used, p, k);
    s->used += k; p += k; n -= k;
    if (s->used < 64) return;
    shaBlock(s, s->buf);
    s->used = 0;
  }
  for (; n >= 64; p += 64, n -= 64) shaBlock(s, p);
  memcpy(s->buf, p, n);
  s->used = n;
}

static void shaFinal(Sha256 *s, unsigned char out[32]) {
  uint64_t bits = s->len * 8;
  unsigned char pad[72] = { 0x80 };
  size_t padLen = (s->used < 56 ? 56 : 120) - s->used;
  for (int i = 0; i < 8; i++) pad[padLen + i] = (unsigned char) (bits >> (56 - 8 * i));
  shaUpdate(s, pad, padLen + 8);
  for (int i = 0; i < 8; i++)
    for (int j = 0; j < 4; j++) out[4 * i + j] = (unsigned char) (s->h[i] >> (24 - 8 * j));
}

/* ---- NAR serialisation of one file, hashed as Nix's hashPath ---- */

/* A NAR string: 64-bit little-endian length, the bytes, zeros up to a multiple of 8. */
static void narString(Sha256 *s, const char *str, size_t n) {
  static const unsigned char zeros[8];
  unsigned char len[8];
  for (int i = 0; i < 8; i++) len[i] = (unsigned char) ((uint64_t) n >> (8 * i));
  shaUpdate(s, len, 8);
  shaUpdate(s, str, n);
  shaUpdate(s, zeros, (8 - n % 8) % 8);
}
#define NAR_STR(s, lit) narString(s, lit, sizeof lit - 1)

static void narHead(Sha256 *s) {
  shaInit(s);
  NAR_STR(s, "nix-archive-1");
  NAR_STR(s, "(");
  NAR_STR(s, "type");
}

/* ---- the optimiser of one store ---- */

/* Sizes of the buffers of a path and of a message naming one. */
#define PATH_BUF 4200
#define MSG_BUF 8600

/* Replaced files queued for closing per handle at most (beyond, they are closed at once); closing threads. */
#define MAX_HELD 256
#define CLOSERS 16
#define HELD_BATCH 16

typedef struct {
  char *storeDir, *linksDir;
  size_t storeLen;
  /* Inodes known to be in .links: open addressing, 0 marks a free slot (inode 0 is never a file's). */
  uint64_t *inodes;
  size_t cap, count;
  double filesLinked, bytesFreed, blocksFreed;
  int pending; /* replaced files queued for the closing threads (atomic) */
  int held[HELD_BATCH]; /* replaced files not queued yet: queued HELD_BATCH at a time, and at the end of each path */
  size_t nheld;
  int deferFrees;
  int pid;
  /* Warnings not yet taken: NUL-terminated, one after another. */
  char *warnings;
  size_t wlen, wcap;
  /* The directory whose entries are being replaced: its lstat, whether it was made writable. */
  char *openDir;
  struct stat openDirSt;
  int openDirChmod;
  int root;
  uint64_t rnd;
  /* The first error: errno (or -1: ECHANGED) and its message. */
  int err;
  char errMsg[MSG_BUF];
  unsigned char readBuf[1 << 16];
} Opt;

static int inoHas(const Opt *o, uint64_t ino) {
  if (!ino) return 0;
  for (size_t i = (ino * 0x9e3779b97f4a7c15ULL) & (o->cap - 1);; i = (i + 1) & (o->cap - 1)) {
    if (o->inodes[i] == ino) return 1;
    if (!o->inodes[i]) return 0;
  }
}

static void inoAdd(Opt *o, uint64_t ino) {
  if (!ino || inoHas(o, ino)) return;
  if ((o->count + 1) * 2 > o->cap) {
    uint64_t *old = o->inodes;
    size_t oldCap = o->cap;
    uint64_t *grown = calloc(oldCap * 2, sizeof *grown);
    if (!grown) return; /* (not remembering an inode only costs a hash later) */
    o->inodes = grown;
    o->cap = oldCap * 2;
    o->count = 0;
    for (size_t i = 0; i < oldCap; i++)
      if (old[i]) inoAdd(o, old[i]);
    free(old);
  }
  size_t i = (ino * 0x9e3779b97f4a7c15ULL) & (o->cap - 1);
  while (o->inodes[i]) i = (i + 1) & (o->cap - 1);
  o->inodes[i] = ino;
  o->count++;
}

static void warn(Opt *o, const char *msg) {
  size_t n = strlen(msg) + 1;
  if (o->wlen + n > o->wcap) {
    size_t cap = (o->wlen + n) * 2;
    char *w = realloc(o->warnings, cap);
    if (!w) return;
    o->warnings = w;
    o->wcap = cap;
  }
  memcpy(o->warnings + o->wlen, msg, n);
  o->wlen += n;
}

/* Record the first error: errno `e` of `syscall` on `path` (as Node words it), or a message of its own. */
static int fail(Opt *o, int e, const char *syscall, const char *path) {
  if (!o->err) {
    o->err = e;
    snprintf(o->errMsg, sizeof o->errMsg, "%s, %s '%s'", strerror(e), syscall, path);
  }
  return -1;
}

static const char *errnoName(int e) {
  switch (e) {
  case -1: return "ECHANGED";
  case ENOENT: return "ENOENT";
  case EACCES: return "EACCES";
  case EPERM: return "EPERM";
  case EEXIST: return "EEXIST";
  case EMLINK: return "EMLINK";
  case ENOSPC: return "ENOSPC";
  case EROFS: return "EROFS";
  case ENOTDIR: return "ENOTDIR";
  case ENAMETOOLONG: return "ENAMETOOLONG";
  case ELOOP: return "ELOOP";
  case EMFILE: return "EMFILE";
  case ENFILE: return "ENFILE";
  case ENOMEM: return "ENOMEM";
  case EXDEV: return "EXDEV";
  case EBUSY: return "EBUSY";
  case EINVAL: return "EINVAL";
  case EDQUOT: return "EDQUOT";
  default: return "EIO";
  }
}

/* Make the open directory canonical again (read-only, mtime 1), as Nix's MakeReadOnly does. */
static int restoreDir(Opt *o) {
  char *dir = o->openDir;
  if (!dir) return 0;
  o->openDir = 0;
  int rc = 0;
  mode_t mode = o->openDirSt.st_mode & 07777;
  if ((o->openDirChmod || (mode != 0444 && mode != 0555)) && chmod(dir, 0444 | (mode & 0100 ? 0111 : 0)) == -1) rc = fail(o, errno, "chmod", dir);
  struct timespec t[2] = { o->openDirSt.st_atim, { 1, 0 } };
  if (utimensat(AT_FDCWD, dir, t, AT_SYMLINK_NOFOLLOW) == -1) rc = fail(o, errno, "lutime", dir);
  free(dir);
  return rc;
}

/* Make the open directory writable: 1 if done, 0 if there is none or it already is, -1 on error. */
static int makeWritable(Opt *o) {
  if (!o->openDir || o->openDirChmod) return 0;
  if (chmod(o->openDir, (o->openDirSt.st_mode & 07777) | 0200) == -1) return fail(o, errno, "chmod", o->openDir);
  o->openDirChmod = 1;
  return 1;
}

/* Get `dir` (with lstat `st`; the store dir when st is 0) ready for its entries to be replaced, once for all of them. */
static int openDirOf(Opt *o, const char *dir, const struct stat *st) {
  if (o->openDir && !strcmp(o->openDir, dir)) return 0;
  if (restoreDir(o) == -1) return -1;
  if (!st) return 0;
  o->openDir = strdup(dir);
  if (!o->openDir) return fail(o, ENOMEM, "strdup", dir);
  o->openDirSt = *st;
  o->openDirChmod = 0;
  return o->root ? 0 : makeWritable(o) == -1 ? -1 : 0;
}

/* Make `linkPath` a link to `p` if there is none: 1 when it is another file that `p` should become, 0 when not, -1 on error. */
static int linkInto(Opt *o, const char *p, const struct stat *st, const char *linkPath) {
  for (;;) {
    struct stat lst;
    if (lstat(linkPath, &lst) == -1) {
      if (errno != ENOENT) return fail(o, errno, "lstat", linkPath);
      if (link(p, linkPath) == 0) {
        inoAdd(o, st->st_ino);
        return 0;
      }
      if (errno == ENOSPC) return 0; /* a full directory index: this file is not deduplicated */
      if (errno != EEXIST) return fail(o, errno, "link", p);
      continue; /* made meanwhile by another process: look at it */
    }
    if (lst.st_ino == st->st_ino) return 0;
    if (lst.st_size == st->st_size) return 1;
    char msg[MSG_BUF];
    snprintf(msg, sizeof msg, "removing corrupted link '%s'", linkPath);
    warn(o, msg);
    warn(o, "There may be more corrupted paths.\nYou should run `nix-store --verify --check-contents --repair` to fix them all");
    unlink(linkPath);
  }
}

/* Replace `p` (in `dir`) by a hard link to `linkPath`, atomically: 1 done, 0 not (EMLINK), 2 when linkPath is gone, -1 on error. */
static int replaceWithLink(Opt *o, const char *dir, const struct stat *dirSt, const char *p, const char *linkPath) {
  if (openDirOf(o, dir, dirSt) == -1) return -1;
  char tmp[PATH_BUF];
  for (;;) {
    o->rnd ^= o->rnd << 13;
    o->rnd ^= o->rnd >> 7;
    o->rnd ^= o->rnd << 17;
    snprintf(tmp, sizeof tmp, "%s/.tmp-link-%d-%u", o->storeDir, o->pid, (unsigned) (o->rnd & 0x7fffffff));
    if (link(linkPath, tmp) == 0) break;
    if (errno == EMLINK) return 0; /* too many links to one file (empty files): leave it */
    if (errno == ENOENT) return 2;
    if (errno != EEXIST) return fail(o, errno, "link", linkPath);
  }
  int r = rename(tmp, p);
  if (r == -1 && errno == EACCES) {
    int w = makeWritable(o);
    if (w == -1) {
      unlink(tmp);
      return -1;
    }
    if (w == 1) r = rename(tmp, p);
    else errno = EACCES;
  }
  if (r == -1) {
    int e = errno;
    unlink(tmp);
    if (e == EMLINK) return 0;
    return fail(o, e, "rename", tmp);
  }
  return 1;
}

static void nixBase32(const unsigned char *bytes, char *out) {
  static const char chars[] = "0123456789abcdfghijklmnpqrsvwxyz";
  int len = (32 * 8 + 4) / 5;
  for (int n = len - 1; n >= 0; n--) {
    int b = n * 5, i = b / 8, j = b % 8;
    unsigned c = (bytes[i] >> j) | (i + 1 < 32 ? (unsigned) bytes[i + 1] << (8 - j) : 0);
    *out++ = chars[c & 0x1f];
  }
  *out = 0;
}

/* ---- the closing threads: the replaced files' descriptors of every handle, closed in turn ---- */

#define QUEUE (CLOSERS * MAX_HELD)
static pthread_mutex_t qLock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t qCond = PTHREAD_COND_INITIALIZER;
static struct { int fd; int *pending; } queue[QUEUE];
static size_t qHead, qLen;
static int closers; /* 0: not started yet; -1: none could be started */

static void *closer(void *arg) {
  (void) arg;
  pthread_mutex_lock(&qLock);
  for (;;) {
    while (!qLen) pthread_cond_wait(&qCond, &qLock);
    int fd = queue[qHead].fd;
    int *pending = queue[qHead].pending;
    qHead = (qHead + 1) % QUEUE;
    qLen--;
    pthread_mutex_unlock(&qLock);
    close(fd);
    __atomic_sub_fetch(pending, 1, __ATOMIC_RELEASE);
    pthread_mutex_lock(&qLock);
  }
  return 0;
}

/* Start the closing threads once (under qLock); whether there are any. */
static int startClosers(void) {
  if (closers) return closers > 0;
  pthread_attr_t a;
  pthread_attr_init(&a);
  pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&a, 64 * 1024);
  closers = -1;
  for (int i = 0; i < CLOSERS; i++) {
    pthread_t t;
    if (pthread_create(&t, &a, closer, 0) == 0) closers = closers < 0 ? 1 : closers + 1;
  }
  pthread_attr_destroy(&a);
  return closers > 0;
}

/* Queue the replaced files held so far for the closing threads (one wake-up for them all), or close them now. */
static void queueHeld(Opt *o) {
  size_t i = 0;
  if (!o->nheld) return;
  pthread_mutex_lock(&qLock);
  if (startClosers())
    for (; i < o->nheld && qLen < QUEUE; i++) {
      queue[(qHead + qLen) % QUEUE].fd = o->held[i];
      queue[(qHead + qLen) % QUEUE].pending = &o->pending;
      qLen++;
      __atomic_add_fetch(&o->pending, 1, __ATOMIC_RELEASE);
    }
  if (i > 1) pthread_cond_broadcast(&qCond);
  else if (i) pthread_cond_signal(&qCond);
  pthread_mutex_unlock(&qLock);
  for (; i < o->nheld; i++) close(o->held[i]);
  o->nheld = 0;
}

/* Free a replaced file: hold it for the closing threads, or close it now. */
static void hold(Opt *o, int fd) {
  if (!o->deferFrees || __atomic_load_n(&o->pending, __ATOMIC_ACQUIRE) + (int) o->nheld >= MAX_HELD) {
    close(fd);
    return;
  }
  o->held[o->nheld++] = fd;
  if (o->nheld == HELD_BATCH) queueHeld(o);
}

/* Link `p` (NAR hash `digest`) into .links, or replace it by the identical file there: 1 when replaced, 0 not, -1 on error. */
static int dedupe(Opt *o, const char *dir, const struct stat *dirSt, const char *p, const struct stat *st, const unsigned char *digest) {
  char linkPath[PATH_BUF];
  char b32[60];
  nixBase32(digest, b32);
  snprintf(linkPath, sizeof linkPath, "%s/%s", o->linksDir, b32);
  for (;;) {
    int l = linkInto(o, p, st, linkPath);
    if (l <= 0) return l;
    int r = replaceWithLink(o, dir, dirSt, p, linkPath);
    if (r == 2) continue; /* the entry went away meanwhile: look again */
    if (r <= 0) return r;
    o->filesLinked++;
    o->bytesFreed += (double) st->st_size;
    o->blocksFreed += (double) st->st_blocks;
    return 1;
  }
}

/* SHA-256 of the NAR of the regular file `p` read from `fd` (-1 when empty). */
static int hashFile(Opt *o, const char *p, int fd, const struct stat *st, unsigned char *digest) {
  Sha256 s;
  narHead(&s);
  NAR_STR(&s, "regular");
  if (st->st_mode & 0100) {
    NAR_STR(&s, "executable");
    NAR_STR(&s, "");
  }
  NAR_STR(&s, "contents");
  uint64_t size = (uint64_t) st->st_size;
  unsigned char len[8];
  for (int i = 0; i < 8; i++) len[i] = (unsigned char) (size >> (8 * i));
  shaUpdate(&s, len, 8);
  for (uint64_t got = 0; got < size;) {
    size_t want = size - got < sizeof o->readBuf ? (size_t) (size - got) : sizeof o->readBuf;
    ssize_t n = read(fd, o->readBuf, want);
    if (n == -1 && errno == EINTR) continue;
    if (n == -1) return fail(o, errno, "read", p);
    if (n == 0) {
      if (!o->err) {
        o->err = -1;
        snprintf(o->errMsg, sizeof o->errMsg, "file '%s' changed while it was hashed", p);
      }
      return -1;
    }
    shaUpdate(&s, o->readBuf, (size_t) n);
    got += (uint64_t) n;
  }
  static const unsigned char zeros[8];
  shaUpdate(&s, zeros, (8 - size % 8) % 8);
  NAR_STR(&s, ")");
  shaFinal(&s, digest);
  return 0;
}

/* SHA-256 of the NAR of the symlink `p`. */
static int hashSymlink(Opt *o, const char *p, const struct stat *st, unsigned char *digest) {
  size_t cap = st->st_size > 0 ? (size_t) st->st_size + 1 : 4096;
  char *target = malloc(cap);
  if (!target) return fail(o, ENOMEM, "readlink", p);
  ssize_t n = readlink(p, target, cap);
  if (n == -1) {
    free(target);
    return fail(o, errno, "readlink", p);
  }
  Sha256 s;
  narHead(&s);
  NAR_STR(&s, "symlink");
  NAR_STR(&s, "target");
  narString(&s, target, (size_t) n);
  NAR_STR(&s, ")");
  shaFinal(&s, digest);
  free(target);
  return 0;
}

static int visit(Opt *o, const char *dir, const struct stat *dirSt, char *p, size_t plen, const struct stat *st);

/* Visit the entries of directory `p` (names read first, then each looked at). */
static int visitDir(Opt *o, char *p, size_t plen, const struct stat *st) {
  DIR *d = opendir(p);
  if (!d) return fail(o, errno, "scandir", p);
  char *names = 0;
  size_t len = 0, cap = 0;
  struct dirent *e;
  for (errno = 0; (e = readdir(d)); errno = 0) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    size_t n = strlen(e->d_name) + 1;
    if (len + n > cap) {
      cap = (len + n) * 2;
      char *grown = realloc(names, cap);
      if (!grown) {
        free(names);
        closedir(d);
        return fail(o, ENOMEM, "scandir", p);
      }
      names = grown;
    }
    memcpy(names + len, e->d_name, n);
    len += n;
  }
  int readErr = errno;
  closedir(d);
  if (readErr) {
    free(names);
    return fail(o, readErr, "scandir", p);
  }
  char *dirPath = strdup(p);
  if (!dirPath) {
    free(names);
    return fail(o, ENOMEM, "scandir", p);
  }
  int rc = 0;
  for (size_t off = 0; off < len && rc == 0; off += strlen(names + off) + 1) {
    const char *name = names + off;
    size_t n = strlen(name);
    if (plen + 1 + n >= 4096) {
      rc = fail(o, ENAMETOOLONG, "lstat", p);
      break;
    }
    p[plen] = '/';
    memcpy(p + plen + 1, name, n + 1);
    struct stat cst;
    if (lstat(p, &cst) == 0) {
      if (!inoHas(o, cst.st_ino)) rc = visit(o, dirPath, st, p, plen + 1 + n, &cst);
    } else if (errno != ENOENT) rc = fail(o, errno, "lstat", p);
    p[plen] = 0;
  }
  free(dirPath);
  free(names);
  return rc;
}

static int visit(Opt *o, const char *dir, const struct stat *dirSt, char *p, size_t plen, const struct stat *st) {
  if (S_ISDIR(st->st_mode)) return visitDir(o, p, plen, st);
  if (!S_ISREG(st->st_mode) && !S_ISLNK(st->st_mode)) return 0;
  if (S_ISREG(st->st_mode) && st->st_mode & 0200) {
    char msg[MSG_BUF];
    snprintf(msg, sizeof msg, "skipping suspicious writable file '%s'", p);
    warn(o, msg);
    return 0;
  }
  if (st->st_nlink > 1 && inoHas(o, st->st_ino)) return 0; /* already linked */
  unsigned char digest[32];
  if (S_ISLNK(st->st_mode)) {
    if (hashSymlink(o, p, st, digest) == -1) return -1;
    return dedupe(o, dir, dirSt, p, st, digest) == -1 ? -1 : 0;
  }
  /* The file stays open until it is replaced, so that freeing its inode happens at its close, in the caller's thread pool. */
  int fd = -1;
  if (st->st_size > 0 && (fd = open(p, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)) == -1) return fail(o, errno, "open", p);
  int r = hashFile(o, p, fd, st, digest);
  if (r == 0) r = dedupe(o, dir, dirSt, p, st, digest);
  if (fd >= 0) {
    if (r == 1) hold(o, fd);
    else close(fd);
  }
  return r == -1 ? -1 : 0;
}

/* ---- Node-API ---- */

static Opt *handleArg(napi_env env, napi_value v) {
  void *data = 0;
  if (napi_get_value_external(env, v, &data) != 0 || !data) napi_throw_error(env, "EINVAL", "expected an optimiser handle");
  return data;
}

static void finalise(napi_env env, void *data, void *hint) {
  (void) env;
  (void) hint;
  Opt *o = data;
  for (size_t i = 0; i < o->nheld; i++) close(o->held[i]);
  while (__atomic_load_n(&o->pending, __ATOMIC_ACQUIRE) > 0) usleep(1000); /* the closing threads still count on it */
  free(o->openDir);
  free(o->storeDir);
  free(o->linksDir);
  free(o->inodes);
  free(o->warnings);
  free(o);
}

/* create(realStoreDir, inodes: Float64Array, deferFrees): a handle. */
static napi_value create(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, 0, 0);
  size_t len = 0;
  if (argc < 3 || napi_get_value_string_utf8(env, argv[0], 0, 0, &len) != 0 || len == 0 || len > 4000) {
    napi_throw_error(env, "EINVAL", "create(realStoreDir, inodes, deferFrees)");
    return 0;
  }
  Opt *o = calloc(1, sizeof *o);
  if (!o) {
    napi_throw_error(env, "ENOMEM", "out of memory");
    return 0;
  }
  o->storeDir = malloc(len + 1);
  o->linksDir = malloc(len + 8);
  o->cap = 1024;
  o->inodes = calloc(o->cap, sizeof *o->inodes);
  napi_value result;
  if (!o->storeDir || !o->linksDir || !o->inodes || napi_create_external(env, o, finalise, 0, &result) != 0) {
    finalise(env, o, 0);
    napi_throw_error(env, "ENOMEM", "out of memory");
    return 0;
  }
  napi_get_value_string_utf8(env, argv[0], o->storeDir, len + 1, &len);
  o->storeLen = len;
  snprintf(o->linksDir, len + 8, "%s/.links", o->storeDir);
  _Bool isTyped = 0;
  int type;
  size_t n = 0;
  void *data = 0;
  if (napi_is_typedarray(env, argv[1], &isTyped) == 0 && isTyped && napi_get_typedarray_info(env, argv[1], &type, &n, &data, 0, 0) == 0 && type == 8 /* float64 */)
    for (size_t i = 0; i < n; i++) inoAdd(o, (uint64_t) ((double *) data)[i]);
  _Bool defer = 0;
  napi_get_value_bool(env, argv[2], &defer);
  o->deferFrees = defer;
  o->root = geteuid() == 0;
  o->pid = (int) getpid();
  struct timeval tv;
  gettimeofday(&tv, 0);
  o->rnd = ((uint64_t) tv.tv_sec << 20) ^ (uint64_t) tv.tv_usec ^ ((uint64_t) getpid() << 32) ^ (uint64_t) (uintptr_t) o;
  if (!o->rnd) o->rnd = 1;
  return result;
}

/*
 * optimisePath(handle, realPath): optimise one store path (file or tree). Returns [code, message, warnings,
 * fds...]: the error that stopped it ('' when none; ENOENT: the path is gone) with its message, the warnings
 * (one string, each ending in NUL) and the replaced files' descriptors for the caller to close.
 */
static napi_value optimisePath(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, 0, 0);
  Opt *o = handleArg(env, argv[0]);
  if (!o) return 0;
  char p[4096 + 8];
  size_t len = 0;
  if (napi_get_value_string_utf8(env, argv[1], p, 4096, &len) != 0 || len >= 4095) {
    napi_throw_error(env, "ENAMETOOLONG", "a store path's location is too long");
    return 0;
  }
  o->err = 0;
  struct stat st;
  if (lstat(p, &st) == -1) fail(o, errno, "lstat", p);
  else visit(o, o->storeDir, 0, p, len, &st);
  restoreDir(o);
  queueHeld(o);
  napi_value out, v;
  napi_create_array(env, &out);
  char msg[MSG_BUF + 32] = "";
  if (o->err == -1) snprintf(msg, sizeof msg, "%s", o->errMsg);
  else if (o->err) snprintf(msg, sizeof msg, "%s: %s", errnoName(o->err), o->errMsg);
  const char *code = o->err ? errnoName(o->err) : "";
  napi_create_string_utf8(env, code, strlen(code), &v);
  napi_set_element(env, out, 0, v);
  napi_create_string_utf8(env, msg, strlen(msg), &v);
  napi_set_element(env, out, 1, v);
  napi_create_string_utf8(env, o->warnings ? o->warnings : "", o->wlen, &v);
  napi_set_element(env, out, 2, v);
  o->wlen = 0;
  return out;
}

/* stats(handle): [filesLinked, bytesFreed, blocksFreed]. */
static napi_value stats(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, 0, 0);
  Opt *o = handleArg(env, argv[0]);
  if (!o) return 0;
  napi_value out, v;
  napi_create_array(env, &out);
  double s[3] = { o->filesLinked, o->bytesFreed, o->blocksFreed };
  for (unsigned i = 0; i < 3; i++) {
    napi_create_double(env, s[i], &v);
    napi_set_element(env, out, i, v);
  }
  return out;
}

/* pending(handle): how many of its replaced files are still to be closed (freed). */
static napi_value pending(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, 0, 0);
  Opt *o = handleArg(env, argv[0]);
  if (!o) return 0;
  napi_value v;
  napi_create_int32(env, __atomic_load_n(&o->pending, __ATOMIC_ACQUIRE), &v);
  return v;
}

/* forget(handle): forget the inodes seen so far (a new optimisePath of Nix's starts with none). */
static napi_value forget(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, 0, 0);
  Opt *o = handleArg(env, argv[0]);
  if (!o) return 0;
  memset(o->inodes, 0, o->cap * sizeof *o->inodes);
  o->count = 0;
  napi_value u;
  napi_get_undefined(env, &u);
  return u;
}

napi_value napi_register_module_v1(napi_env env, napi_value exports) {
  static const struct { const char *name; napi_callback f; } fns[] = {
    { "create", create }, { "optimisePath", optimisePath }, { "stats", stats }, { "pending", pending }, { "forget", forget },
  };
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    napi_value f;
    napi_create_function(env, fns[i].name, strlen(fns[i].name), fns[i].f, 0, &f);
    napi_set_named_property(env, exports, fns[i].name, f);
  }
  return exports;
}
