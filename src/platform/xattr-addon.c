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

/* Stack room for the string arguments of one call: their sum is rarely over 2 kB (a path or two, the names
   of a build's inputs). */
#define ARGS_ROOM 2048

/* The n string arguments v (JavaScript strings) as NUL-terminated strings s[i] of lengths len[i]: one after
   another in buf (cap bytes) when they all fit, else in one block malloc'd into *heap, which the caller
   frees (free(0) when they fit). 0 after throwing. */
static int stringArgs(napi_env env, const napi_value *v, size_t n, char *buf, size_t cap, const char **s, size_t *len, char **heap) {
  *heap = 0;
  size_t used = 0, i;
  for (i = 0; i < n; i++) {
    size_t room = cap - used;
    if (napi_get_value_string_utf8(env, v[i], buf + used, room, &len[i]) != 0) { napi_throw_error(env, "EINVAL", "expected a string"); return 0; }
    /* Node stops short of a character that does not fit whole (up to 4 bytes): more than 4 bytes to spare,
       and nothing was left out. */
    if (len[i] + 4 >= room) break;
    s[i] = buf + used;
    used += len[i] + 1;
  }
  if (i == n) return 1;
  /* One did not fit: the whole lengths of all, then all of them in one block. */
  size_t total = 0;
  for (i = 0; i < n; i++) {
    if (napi_get_value_string_utf8(env, v[i], 0, 0, &len[i]) != 0) { napi_throw_error(env, "EINVAL", "expected a string"); return 0; }
    total += len[i] + 1;
  }
  if (!(*heap = malloc(total))) { napi_throw_error(env, "ENOMEM", "out of memory"); return 0; }
  used = 0;
  for (i = 0; i < n; i++) {
    napi_get_value_string_utf8(env, v[i], *heap + used, len[i] + 1, &len[i]);
    s[i] = *heap + used;
    used += len[i] + 1;
  }
  return 1;
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
  napi_value strs[2] = { argv[0], argv[2] };
  char buf[ARGS_ROOM], *heap;
  const char *s[2]; size_t len[2];
  if (!stringArgs(env, strs, 2, buf, sizeof buf, s, len, &heap)) return 0;
  napi_value r = 0;
  napi_get_boolean(env, pristine(AT_FDCWD, s[0], (uid_t) uid, *s[1] ? s[1] : 0), &r);
  free(heap);
  return r;
}

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif

/* renameNoReplace(from, to): renameat2 with RENAME_NOREPLACE (never replaces what is at to); 0, or the errno. */
static napi_value renameNoReplace(napi_env env, napi_callback_info info) {
  size_t argc = 2; napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, 0, 0);
  char buf[ARGS_ROOM], *heap;
  const char *s[2]; size_t len[2];
  if (!stringArgs(env, argv, 2, buf, sizeof buf, s, len, &heap)) return 0;
  napi_value r = 0;
  napi_create_int32(env, syscall(SYS_renameat2, AT_FDCWD, s[0], AT_FDCWD, s[1], RENAME_NOREPLACE) == 0 ? 0 : errno, &r);
  free(heap);
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
   spec is read where the Buffer has it, and the strings go to the stack unless together they are longer
   than its room (stringArgs). */
static napi_value skeletonUnchanged(napi_env env, napi_callback_info info) {
  size_t argc = 6; napi_value argv[6];
  napi_get_cb_info(env, info, &argc, argv, 0, 0);
  void *spec = 0; size_t specLen = 0; int64_t placed = 0; _Bool lossless;
  if (argc < 6 || napi_get_buffer_info(env, argv[1], &spec, &specLen) != 0) { napi_throw_error(env, "EINVAL", "expected a spec Buffer"); return 0; }
  if (napi_get_value_bigint_int64(env, argv[5], &placed, &lossless) != 0) { napi_throw_error(env, "EINVAL", "expected a BigInt"); return 0; }
  /* root, store, storeFiles, mountpoints */
  napi_value strs[4] = { argv[0], argv[2], argv[3], argv[4] };
  char buf[ARGS_ROOM], *heap;
  const char *s[4]; size_t len[4];
  if (!stringArgs(env, strs, 4, buf, sizeof buf, s, len, &heap)) return 0;
  struct reader r = { spec, (const unsigned char *) spec + specLen };
  napi_value v = 0;
  napi_get_boolean(env, skeletonCheck(s[0], &r, s[1], s[2], len[2], s[3], len[3], placed), &v);
  free(heap);
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
