// libfuse3's low-level API for Swift (docs/FUSE-NOTES facts: FUSE_USE_VERSION must be set
// here, and the entry points that are macros on some libfuse versions are wrapped).
#ifndef TESSERA_CFUSE_SHIM_H
#define TESSERA_CFUSE_SHIM_H

#define FUSE_USE_VERSION 312
#include <fuse3/fuse_lowlevel.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>

#define TESSERA_RENAME_NOREPLACE (1 << 0)
#define TESSERA_RENAME_EXCHANGE (1 << 1)

static inline struct fuse_session *tessera_fuse_session_new(struct fuse_args *args, const struct fuse_lowlevel_ops *ops, void *userdata) {
    return fuse_session_new(args, ops, sizeof(struct fuse_lowlevel_ops), userdata);
}

static inline int tessera_fuse_loop_mt(struct fuse_session *se, unsigned max_threads) {
    struct fuse_loop_config *config = fuse_loop_cfg_create();
    if (config == NULL) return -ENOMEM;
    fuse_loop_cfg_set_max_threads(config, max_threads);
    fuse_loop_cfg_set_clone_fd(config, 0);
    int r = fuse_session_loop_mt(se, config);
    fuse_loop_cfg_destroy(config);
    return r;
}

/// Fills a struct stat (Swift cannot name the type: it collides with stat()).
static inline void tessera_fill_stat(struct stat *st, unsigned long long ino, unsigned mode, unsigned nlink, unsigned uid, unsigned gid,
                                     unsigned long long rdev, unsigned long long size, unsigned long long blocks,
                                     unsigned long long atime_ns, unsigned long long mtime_ns, unsigned long long ctime_ns) {
    memset(st, 0, sizeof *st);
    st->st_ino = ino;
    st->st_mode = mode;
    st->st_nlink = nlink;
    st->st_uid = uid;
    st->st_gid = gid;
    st->st_rdev = rdev;
    st->st_size = (off_t)size;
    st->st_blocks = (blkcnt_t)blocks;
    st->st_blksize = 1 << 20;
    st->st_atim.tv_sec = atime_ns / 1000000000ULL;
    st->st_atim.tv_nsec = atime_ns % 1000000000ULL;
    st->st_mtim.tv_sec = mtime_ns / 1000000000ULL;
    st->st_mtim.tv_nsec = mtime_ns % 1000000000ULL;
    st->st_ctim.tv_sec = ctime_ns / 1000000000ULL;
    st->st_ctim.tv_nsec = ctime_ns % 1000000000ULL;
}

/// Reads a setattr request's fields.
static inline unsigned long long tessera_stat_size(const struct stat *st) { return (unsigned long long)st->st_size; }
static inline unsigned tessera_stat_mode(const struct stat *st) { return st->st_mode; }
static inline unsigned tessera_stat_uid(const struct stat *st) { return st->st_uid; }
static inline unsigned tessera_stat_gid(const struct stat *st) { return st->st_gid; }
static inline unsigned long long tessera_stat_atime_ns(const struct stat *st) {
    return (unsigned long long)st->st_atim.tv_sec * 1000000000ULL + (unsigned long long)st->st_atim.tv_nsec;
}
static inline unsigned long long tessera_stat_mtime_ns(const struct stat *st) {
    return (unsigned long long)st->st_mtim.tv_sec * 1000000000ULL + (unsigned long long)st->st_mtim.tv_nsec;
}

#endif
