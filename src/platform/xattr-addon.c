/* realise xattr addon: strip(path, ignored) and list(path), with Node-API declared by hand; for reused
   build directories, pristineDir(path, uid, inner) and renameNoReplace(from, to); for reused chroot
   skeletons, skeletonUnchanged(root, spec, store, storeFiles, mountpoints, placed). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include "skeleton-check.h"

typedef struct napi_env__ *napi_env;
typedef struct napi_value__ *napi_value;
typedef struct napi_callback_info__ *napi_callback_info;
typedef int napi_status;
typedef napi_value (*napi_callback)(napi_env, napi_callback_info);
extern napi_status napi_get_cb_info(napi_env, napi_callback_info, size_t *, napi_value *, napi_value *, void **);
extern napi_status napi_get_value_string_utf8(napi_env, napi_value, char *, size_t, size_t *);
extern napi_status napi_get_buffer_info(napi_env, napi_value, void **, size_t *);
extern napi_status napi_is_buffer(napi_env, napi_value, _Bool *);
extern napi_status napi_create_string_utf8(napi_env, const char *, size_t, napi_value *);
extern napi_status napi_create_int32(napi_env, int, napi_value *);
extern napi_status napi_get_value_uint32(napi_env, napi_value, unsigned *);
extern napi_status napi_get_boolean(napi_env, _Bool, napi_value *);
extern napi_status napi_create_array(napi_env, napi_value *);
extern napi_status napi_set_element(napi_env, napi_value, unsigned, napi_value);
extern napi_status napi_create_function(napi_env, const char *, size_t, napi_callback, void *, napi_value *);
extern napi_status napi_set_named_property(napi_env, napi_value, const char *, napi_value);
extern napi_status napi_throw_error(napi_env, const char *, const char *);
extern napi_status napi_get_value_bigint_int64(napi_env, napi_value, int64_t *, _Bool *);

/* A string or Buffer argument as a NUL-terminated string (malloc'd), or 0 after throwing. */
static char *stringArg(napi_env env, napi_value v) {
  _Bool isBuf = 0; void *data; size_t len;
  if (napi_is_buffer(env, v, &isBuf) == 0 && isBuf && napi_get_buffer_info(env, v, &data, &len) == 0) {
    char *s = malloc(len + 1);
    if (s) { memcpy(s, data, len); s[len] = 0; }
    return s;
  }
  if (napi_get_value_string_utf8(env, v, 0, 0, &len) != 0) { napi_throw_error(env, "EINVAL", "expected a string or Buffer"); return 0; }
  char *s = malloc(len + 1);
  if (s) napi_get_value_string_utf8(env, v, s, len + 1, &len);
  return s;
}

/* A string argument (a JavaScript string) as a NUL-terminated string in buf (cap bytes) when it fits,
   else in memory malloc'd into *heap (the caller frees it); *len its length. 0 after throwing. */
static char *stringInto(napi_env env, napi_value v, char *buf, size_t cap, size_t *len, char **heap) {
  if (napi_get_value_string_utf8(env, v, buf, cap, len) != 0) { napi_throw_error(env, "EINVAL", "expected a string"); return 0; }
  /* Node stops short of a character that does not fit whole (up to 4 bytes): more than 4 bytes to spare,
     and nothing was left out. */
  if (*len + 4 < cap) return buf;
  /* Perhaps cut short: its whole length, then all of it. */
  napi_get_value_string_utf8(env, v, 0, 0, len);
  if (!(*heap = malloc(*len + 1))) { napi_throw_error(env, "ENOMEM", "out of memory"); return 0; }
  napi_get_value_string_utf8(env, v, *heap, *len + 1, len);
  return *heap;
}

static napi_value throwErrno(napi_env env, const char *what, int e) {
  char msg[256];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(e));
  const char *code = e == EPERM ? "EPERM" : e == EACCES ? "EACCES" : e == ENOENT ? "ENOENT" : e == EROFS ? "EROFS" : e == ENOTSUP ? "ENOTSUP" : "EIO";
  napi_throw_error(env, code, msg);
  return 0;
}

/* The names of path's extended attributes (llistxattr), as one NUL-separated buffer; *len < 0 on error. */
static char *names(const char *p, ssize_t *len) {
  char small[1024];
  ssize_t n = llistxattr(p, small, sizeof small);
  if (n < 0 && errno != ERANGE) { *len = -1; return 0; }
  for (;;) {
    if (n >= 0) { char *r = malloc(n + 1); if (r) memcpy(r, small, n); *len = n; return r; }
    n = llistxattr(p, 0, 0);
    if (n < 0) { *len = -1; return 0; }
    char *r = malloc(n + 1);
    ssize_t m = llistxattr(p, r, n);
    if (m >= 0) { *len = m; return r; }
    free(r);
    if (errno != ERANGE) { *len = -1; return 0; }
  }
}

/* strip(path, ignored): removes every attribute whose name is not in ignored (NUL-separated); returns how many. */
static napi_value strip(napi_env env, napi_callback_info info) {
  size_t argc = 2; napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, 0, 0);
  char *p = stringArg(env, argv[0]); if (!p) return 0;
  size_t ilen = 0; void *idata = 0;
  if (argc > 1) napi_get_buffer_info(env, argv[1], &idata, &ilen);
  ssize_t len; char *list = names(p, &len);
  if (len < 0) {
    int e = errno; free(p);
    if (e == ENOTSUP) { napi_value r; napi_create_int32(env, 0, &r); return r; } /* file system without xattrs */
    return throwErrno(env, "listing extended attributes", e);
  }
  int removed = 0;
  for (ssize_t off = 0; off < len; off += strlen(list + off) + 1) {
    const char *name = list + off;
    int skip = 0;
    for (size_t io = 0; io < ilen; io += strlen((char *) idata + io) + 1)
      if (!strcmp((char *) idata + io, name)) { skip = 1; break; }
    if (skip) continue;
    if (lremovexattr(p, name) == -1 && errno != ENODATA) {
      int e = errno; char what[512];
      snprintf(what, sizeof what, "removing extended attribute '%s'", name);
      free(list); free(p);
      return throwErrno(env, what, e);
    }
    removed++;
  }
  free(list); free(p);
  napi_value r; napi_create_int32(env, removed, &r); return r;
}

static napi_value list(napi_env env, napi_callback_info info) {
  size_t argc = 1; napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, 0, 0);
  char *p = stringArg(env, argv[0]); if (!p) return 0;
  ssize_t len; char *l = names(p, &len);
  int e = errno; free(p);
  napi_value arr; napi_create_array(env, &arr);
  if (len < 0) { if (e == ENOTSUP) return arr; return throwErrno(env, "listing extended attributes", e); }
  unsigned i = 0;
  for (ssize_t off = 0; off < len; off += strlen(l + off) + 1) {
    napi_value s; napi_create_string_utf8(env, l + off, strlen(l + off), &s); napi_set_element(env, arr, i++, s);
  }
  free(l);
  return arr;
}

static int pristine(int atfd, const char *name, uid_t uid, const char *inner);

/* A pristine directory's entry: only inner, once, itself pristine. */
struct pristineScan { uid_t uid; const char *inner; int seenInner; };

static int pristineEntry(int fd, const char *name, unsigned char type, void *arg) {
  (void) type;
  struct pristineScan *p = arg;
  if (!p->inner || p->seenInner || strcmp(name, p->inner)) return 0;
  p->seenInner = 1;
  return pristine(fd, p->inner, p->uid, 0);
}

/* Whether name (under atfd) is a directory as realise makes build directories: mode 0700, owned by uid,
   without extended attributes (ACLs are some), empty; or, given inner, holding only inner, itself so. */
static int pristine(int atfd, const char *name, uid_t uid, const char *inner) {
  int fd = openat(atfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return 0;
  struct stat st;
  int ok = fstat(fd, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 07777) == 0700 && st.st_uid == uid;
  if (ok) { ssize_t n = flistxattr(fd, 0, 0); ok = n == 0 || (n < 0 && errno == ENOTSUP); }
  struct pristineScan scan = { uid, inner, 0 };
  ok = ok && eachEntry(fd, pristineEntry, &scan);
  close(fd);
  return ok && (!inner || scan.seenInner);
}

/* pristineDir(path, uid, inner): see pristine (inner "" for none). */
static napi_value pristineDir(napi_env env, napi_callback_info info) {
  size_t argc = 3; napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, 0, 0);
  unsigned uid = 0; napi_get_value_uint32(env, argv[1], &uid);
  char pBuf[4096], innerBuf[256];
  char *heap[2] = { 0, 0 };
  size_t pLen, innerLen;
  const char *p = stringInto(env, argv[0], pBuf, sizeof pBuf, &pLen, &heap[0]);
  const char *inner = p ? stringInto(env, argv[2], innerBuf, sizeof innerBuf, &innerLen, &heap[1]) : 0;
  napi_value r = 0;
  if (inner) napi_get_boolean(env, pristine(AT_FDCWD, p, (uid_t) uid, *inner ? inner : 0), &r);
  free(heap[0]); free(heap[1]);
  return r;
}

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif

/* renameNoReplace(from, to): renameat2 with RENAME_NOREPLACE (never replaces what is at to); 0, or the errno. */
static napi_value renameNoReplace(napi_env env, napi_callback_info info) {
  size_t argc = 2; napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, 0, 0);
  char fromBuf[4096], toBuf[4096];
  char *heap[2] = { 0, 0 };
  size_t fromLen, toLen;
  const char *from = stringInto(env, argv[0], fromBuf, sizeof fromBuf, &fromLen, &heap[0]);
  const char *to = from ? stringInto(env, argv[1], toBuf, sizeof toBuf, &toLen, &heap[1]) : 0;
  napi_value r = 0;
  if (to) napi_create_int32(env, syscall(SYS_renameat2, AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0 ? 0 : errno, &r);
  free(heap[0]); free(heap[1]);
  return r;
}

/* skeletonCheckAt on the directory root (not followed if a symlink). */
static int skeletonCheck(const char *root, struct reader *r, const char *store, const char *files, size_t filesLen,
                         const char *mounts, size_t mountsLen, int64_t placed) {
  int rootFd = open(root, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (rootFd < 0) return 0;
  int ok = skeletonCheckAt(rootFd, r, store, files, filesLen, mounts, mountsLen, placed, 0);
  close(rootFd);
  return ok;
}

/* skeletonUnchanged(root, spec, store, storeFiles, mountpoints, placed): see skeletonCheck. storeFiles and
   mountpoints are NUL-separated names, placed a BigInt of ns (0n: unknown). The call is synchronous: the
   spec is read where the Buffer has it, and the strings go to the stack unless one is longer than its room. */
static napi_value skeletonUnchanged(napi_env env, napi_callback_info info) {
  size_t argc = 6; napi_value argv[6];
  napi_get_cb_info(env, info, &argc, argv, 0, 0);
  void *spec = 0; size_t specLen = 0; int64_t placed = 0; _Bool lossless;
  if (argc < 6 || napi_get_buffer_info(env, argv[1], &spec, &specLen) != 0) { napi_throw_error(env, "EINVAL", "expected a spec Buffer"); return 0; }
  if (napi_get_value_bigint_int64(env, argv[5], &placed, &lossless) != 0) { napi_throw_error(env, "EINVAL", "expected a BigInt"); return 0; }
  char rootBuf[4096], storeBuf[1024], filesBuf[2048], mountsBuf[2048];
  char *heap[4] = { 0, 0, 0, 0 };
  size_t rootLen, storeLen, filesLen, mountsLen;
  const char *root = stringInto(env, argv[0], rootBuf, sizeof rootBuf, &rootLen, &heap[0]);
  const char *store = root ? stringInto(env, argv[2], storeBuf, sizeof storeBuf, &storeLen, &heap[1]) : 0;
  const char *files = store ? stringInto(env, argv[3], filesBuf, sizeof filesBuf, &filesLen, &heap[2]) : 0;
  const char *mounts = files ? stringInto(env, argv[4], mountsBuf, sizeof mountsBuf, &mountsLen, &heap[3]) : 0;
  napi_value v = 0;
  if (mounts) {
    struct reader r = { spec, (const unsigned char *) spec + specLen };
    napi_get_boolean(env, skeletonCheck(root, &r, store, files, filesLen, mounts, mountsLen, placed), &v);
  }
  for (int i = 0; i < 4; i++) free(heap[i]);
  return v;
}

napi_value napi_register_module_v1(napi_env env, napi_value exports) {
  napi_value f;
  napi_create_function(env, "pristineDir", 11, pristineDir, 0, &f); napi_set_named_property(env, exports, "pristineDir", f);
  napi_create_function(env, "renameNoReplace", 15, renameNoReplace, 0, &f); napi_set_named_property(env, exports, "renameNoReplace", f);
  napi_create_function(env, "skeletonUnchanged", 17, skeletonUnchanged, 0, &f); napi_set_named_property(env, exports, "skeletonUnchanged", f);
  napi_create_function(env, "strip", 5, strip, 0, &f); napi_set_named_property(env, exports, "strip", f);
  napi_create_function(env, "list", 4, list, 0, &f); napi_set_named_property(env, exports, "list", f);
  return exports;
}
