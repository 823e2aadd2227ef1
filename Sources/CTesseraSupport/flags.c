// Open flags that need _GNU_SOURCE to be visible.
#define _GNU_SOURCE
#include <fcntl.h>
#include "CTesseraSupport.h"

int tessera_direct_sync_flags(void) { return O_DIRECT | O_DSYNC; }

int tessera_direct_flags(void) { return O_DIRECT; }

#include <errno.h>

// Reserves [offset, offset + length) of `fd` with Linux fallocate (mode 0), retrying EINTR.
// Returns 0 or the errno. Unlike posix_fallocate, a file system that cannot reserve says
// EOPNOTSUPP instead of having glibc write a zero byte into every block that reads as zero,
// which would race with writes to the same blocks.
int tessera_reserve(int fd, long long offset, long long length) {
    while (fallocate(fd, 0, (off_t)offset, (off_t)length) != 0) {
        if (errno != EINTR) return errno;
    }
    return 0;
}

#include <malloc.h>

int tessera_set_mmap_threshold(int bytes) { return mallopt(M_MMAP_THRESHOLD, bytes); }

int tessera_keep_freed_blocks(int bytes) {
    return mallopt(M_MMAP_THRESHOLD, bytes) == 1 && mallopt(M_TRIM_THRESHOLD, bytes) == 1;
}

// posix_spawn's GNU extensions, for TesseraLocal's ChildProcess.
#include <spawn.h>
#include <unistd.h>

int tessera_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int tessera_spawn_close_from(posix_spawn_file_actions_t *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}

short tessera_spawn_setsid_flag(void) { return POSIX_SPAWN_SETSID; }
