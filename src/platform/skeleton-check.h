/* realise: the check that a reused chroot skeleton is unchanged (see ChrootPool in chroot.ts), shared by the
   xattr addon (xattr-addon.c: the check on Node's main thread, for the helper run per build) and the
   sandbox helper (sandbox-helper.c: the check in the build's own process once the builder is gone, for
   builds on the helper server). Each of them includes it; compile-c.ts puts its text in their place when
   it compiles them on the user's machine. */
#ifndef REALISE_SKELETON_CHECK_H
#define REALISE_SKELETON_CHECK_H
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Calls fn(fd, name, type, arg) for each entry of the directory fd but "." and "..", until fn returns 0,
   reading it with getdents64 itself (fdopendir and readdir add an fstat and two fcntl). 1 when the whole
   directory was read and fn returned 1 for each entry, else 0. fd stays open. */
static int eachEntry(int fd, int (*fn)(int, const char *, unsigned char, void *), void *arg) {
  _Alignas(8) char buf[8192];
  for (;;) {
    long n = syscall(SYS_getdents64, fd, buf, sizeof buf);
    if (n <= 0) return n == 0;
    for (long off = 0; off < n;) {
      /* struct linux_dirent64: u64 ino, s64 off, u16 reclen, u8 type, NUL-terminated name */
      const char *e = buf + off;
      unsigned short reclen;
      memcpy(&reclen, e + 16, sizeof reclen);
      off += reclen;
      const char *name = e + 19;
      if (!strcmp(name, ".") || !strcmp(name, "..")) continue;
      if (!fn(fd, name, (unsigned char) e[18], arg)) return 0;
    }
  }
}

/* A chroot skeleton's reference state, as chroot.ts encodes it (little-endian): a u32 count of inodes, the
   u32 mode of the mount point directories a build leaves in the store dir (type bits included), then per
   inode: u32 length and bytes of its path from the root ("" for the root, else "/..."), u32 flags
   (SK_*), eight i64 (ino, mode, uid, gid, nlink, size, mtime and ctime in ns), u32 count and
   NUL-terminated sorted names of a directory's entries, u32 length and bytes of a file's contents. */
enum { SK_STORE = 1, SK_TIMES_MAY_CHANGE = 2, SK_NAMES = 4, SK_DATA = 8 };

struct reader { const unsigned char *p, *end; };

static int readU32(struct reader *r, uint32_t *v) {
  if (r->end - r->p < 4) return 0;
  *v = r->p[0] | r->p[1] << 8 | r->p[2] << 16 | (uint32_t) r->p[3] << 24;
  r->p += 4;
  return 1;
}

static int readI64(struct reader *r, int64_t *v) {
  uint32_t lo, hi;
  if (!readU32(r, &lo) || !readU32(r, &hi)) return 0;
  *v = (int64_t) ((uint64_t) hi << 32 | lo);
  return 1;
}

static int64_t ns(struct timespec t) { return (int64_t) t.tv_sec * 1000000000 + t.tv_nsec; }

/* Whether a NUL-separated list (len bytes) holds name. */
static int listed(const char *list, size_t len, const char *name) {
  for (size_t off = 0; off < len; off += strlen(list + off) + 1) if (!strcmp(list + off, name)) return 1;
  return 0;
}

/* How the checking process sees the owners of the skeleton's inodes: from inside a user namespace (the
   sandbox helper's build process), the caller's uid and gid show as the ids they are mapped to there
   (`seen`), every other as the kernel's overflow id. NULL: from the caller's own namespace. */
struct skeletonIds { int64_t uidSeen, uid, gidSeen, gid; };

/* An owner as seen (uid or gid) given back as the caller's (`ours`) when it is the one mapped to it, else
   as -1, which no reference owner is. */
static int64_t ownerOf(int64_t seen, int64_t mappedTo, int64_t ours) {
  return seen == mappedTo ? ours : -1;
}

static int noEntry(int fd, const char *name, unsigned char type, void *arg) {
  (void) fd; (void) name; (void) type; (void) arg;
  return 0;
}

/* What a mount point directory left in the store dir must be: a directory with the mode the helper made it
   with, the store dir's owner, no subdirectory and no entry at all (what a builder able to unmount the
   input on it wrote underneath). Its entries are listed unless its ctime is older than `placed` (see
   skeletonCheckAt: then it is as it was when an earlier check found it empty). */
struct mountpointRef { int64_t mode, uid, gid, placed; const struct skeletonIds *ids; };

static int mountpointEmpty(int storeFd, const char *name, const struct mountpointRef *m) {
  struct stat st;
  if (fstatat(storeFd, name, &st, AT_SYMLINK_NOFOLLOW) == -1) return 0;
  int64_t uid = m->ids ? ownerOf(st.st_uid, m->ids->uidSeen, m->ids->uid) : (int64_t) st.st_uid;
  int64_t gid = m->ids ? ownerOf(st.st_gid, m->ids->gidSeen, m->ids->gid) : (int64_t) st.st_gid;
  if ((int64_t) st.st_mode != m->mode || uid != m->uid || gid != m->gid || st.st_nlink != 2) return 0;
  if (m->placed != 0 && ns(st.st_ctim) < m->placed) return 1;
  int fd = openat(storeFd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return 0;
  int empty = eachEntry(fd, noEntry, 0);
  close(fd);
  return empty;
}

/* A listing compared with a NUL-separated list of names (see sameEntries). */
struct entriesScan { const char *list; size_t len; uint32_t seen; const struct mountpointRef *mountpoints; };

static int entryListed(int fd, const char *name, unsigned char type, void *arg) {
  struct entriesScan *s = arg;
  s->seen++;
  if (!listed(s->list, s->len, name)) return 0;
  if (!s->mountpoints) return 1;
  return (type == DT_DIR || type == DT_UNKNOWN) && mountpointEmpty(fd, name, s->mountpoints);
}

/* Whether the directory fd (taken) holds exactly the names of the NUL-separated list of count names, and
   (mountpoints) only empty mount point directories as described there. */
static int sameEntries(int fd, const char *list, size_t len, uint32_t count, const struct mountpointRef *mountpoints) {
  struct entriesScan s = { list, len, 0, mountpoints };
  int ok = eachEntry(fd, entryListed, &s);
  close(fd);
  return ok && s.seen == count;
}

/* Whether the file rel (under the directory atfd) holds exactly len bytes of data (one read of one byte more). */
static int sameData(int atfd, const char *rel, const unsigned char *data, uint32_t len) {
  int fd = openat(atfd, rel, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return 0;
  unsigned char *got = malloc((size_t) len + 1);
  ssize_t n = got ? pread(fd, got, (size_t) len + 1, 0) : -1;
  int ok = n == (ssize_t) len && !memcmp(got, data, len);
  free(got); close(fd);
  return ok;
}

/* The directory rel (a path of components from the directory dirfd) opened (O_PATH), with no symlink and no
   ".." followed on the way: -1 when a component is not a directory. The builder owns the chroot's root, so
   any component of a path in it may have become a symlink to a host directory. */
static int openDirBeneath(int dirfd, const char *rel) {
  char buf[4096];
  size_t n = strlen(rel);
  if (n >= sizeof buf) return -1;
  memcpy(buf, rel, n + 1);
  int fd = openat(dirfd, ".", O_PATH | O_DIRECTORY | O_CLOEXEC);
  char *save = 0;
  for (char *c = strtok_r(buf, "/", &save); c && fd >= 0; c = strtok_r(0, "/", &save)) {
    int next = strcmp(c, "..") && strcmp(c, ".") ? openat(fd, c, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) : -1;
    close(fd);
    fd = next;
  }
  return fd;
}

/* See skeletonUnchanged in chroot.ts, whose check this is: storeFiles (NUL-separated names) are unlinked
   from the store dir (store: its path from the root), then every inode of spec is compared. Paths are
   walked from the root, opened once (a walk of the root's own path per call cost the kernel more). The
   unlinks come before any comparison, so the store dir they go through is reached without following a
   symlink (openDirBeneath): the builder could have made a component of its path one, to a host directory.
   ids: see skeletonIds. */
static int skeletonCheckAt(int rootFd, struct reader *r, const char *store, const char *files, size_t filesLen,
                           const char *mounts, size_t mountsLen, int64_t placed, const struct skeletonIds *ids) {
  char rel[8192];
  int storeFd = -1;
  for (size_t off = 0; off < filesLen; off += strlen(files + off) + 1) {
    const char *name = files + off;
    if (!*name) continue;
    if (strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, "..")) goto refused;
    if (storeFd < 0 && (storeFd = openDirBeneath(rootFd, store)) < 0) return 0;
    if (unlinkat(storeFd, name, 0) == -1 && errno != ENOENT) goto refused;
  }
  if (storeFd >= 0) close(storeFd);
  uint32_t nMounts = 0;
  for (size_t off = 0; off < mountsLen; off += strlen(mounts + off) + 1) if (mounts[off]) nMounts++;
  uint32_t count, mountMode;
  if (!readU32(r, &count) || !readU32(r, &mountMode)) return 0;
  for (uint32_t k = 0; k < count; k++) {
    uint32_t slen, flags, nNames, dataLen;
    if (!readU32(r, &slen) || (size_t) (r->end - r->p) < slen || slen >= sizeof rel) return 0;
    /* The suffix is '' (the root: ".") or '/' and a path from the root. */
    if (slen == 0) strcpy(rel, ".");
    else if (r->p[0] != '/' || slen < 2) return 0;
    else { memcpy(rel, r->p + 1, slen - 1); rel[slen - 1] = 0; }
    r->p += slen;
    int64_t ref[8];
    if (!readU32(r, &flags)) return 0;
    for (int i = 0; i < 8; i++) if (!readI64(r, &ref[i])) return 0;
    if (!readU32(r, &nNames)) return 0;
    const char *names = (const char *) r->p;
    for (uint32_t i = 0; i < nNames; i++) {
      const unsigned char *nul = memchr(r->p, 0, r->end - r->p);
      if (!nul) return 0;
      r->p = nul + 1;
    }
    size_t namesLen = (const char *) r->p - names;
    if (!readU32(r, &dataLen) || (size_t) (r->end - r->p) < dataLen) return 0;
    const unsigned char *data = r->p;
    r->p += dataLen;

    struct stat st;
    if (fstatat(rootFd, rel, &st, AT_SYMLINK_NOFOLLOW) == -1) return 0;
    int64_t nlink = flags & SK_STORE ? ref[4] + nMounts : ref[4];
    int64_t uid = ids ? ownerOf(st.st_uid, ids->uidSeen, ids->uid) : (int64_t) st.st_uid;
    int64_t gid = ids ? ownerOf(st.st_gid, ids->gidSeen, ids->gid) : (int64_t) st.st_gid;
    if ((int64_t) st.st_ino != ref[0] || (int64_t) st.st_mode != ref[1] || uid != ref[2] || gid != ref[3] ||
        (int64_t) st.st_nlink != nlink || (int64_t) st.st_size != ref[5]) return 0;
    if (!(flags & SK_TIMES_MAY_CHANGE) && (ns(st.st_mtim) != ref[6] || ns(st.st_ctim) != ref[7])) return 0;
    if (flags & SK_STORE) {
      /* The mount points are owned as the store dir is: both made by the caller. */
      struct mountpointRef m = { mountMode, ref[2], ref[3], placed, ids };
      int fd = openat(rootFd, rel, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (fd < 0 || !sameEntries(fd, mounts, mountsLen, nMounts, &m)) return 0;
      continue;
    }
    /* The root's times change with the rename: its entries are always listed. */
    if (slen > 0 && placed != 0 && ref[7] < placed) continue;
    if (flags & SK_NAMES) {
      int fd = openat(rootFd, rel, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (fd < 0 || !sameEntries(fd, names, namesLen, nNames, 0)) return 0;
    }
    if ((flags & SK_DATA) && !sameData(rootFd, rel, data, dataLen)) return 0;
  }
  return r->p == r->end;
refused:
  if (storeFd >= 0) close(storeFd);
  return 0;
}

#endif
