// C helpers for Tessera: CRC32C (Castagnoli) with SSE4.2 when the CPU has it.
#ifndef CTESSERA_SUPPORT_H
#define CTESSERA_SUPPORT_H

#include <stddef.h>
#include <stdint.h>

/// Extends `crc` (start with 0) over `len` bytes at `data`. Standard CRC32C:
/// reflected polynomial 0x82F63B78, initial value and final xor 0xFFFFFFFF are applied
/// inside, so crc32c(crc32c(0, a), b) == crc32c(0, a ++ b).
uint32_t tessera_crc32c(uint32_t crc, const void *data, size_t len);

/// CRC32 as zlib computes it (reflected polynomial 0xEDB88320), extended like crc32c.
uint32_t tessera_crc32(uint32_t crc, const void *data, size_t len);

/// CRC64/NVME (reflected polynomial 0x9A6C9329AC4BC9B5, init and xorout all ones),
/// extended like crc32c.
uint64_t tessera_crc64nvme(uint64_t crc, const void *data, size_t len);



/// O_DIRECT | O_DSYNC, which Swift's Glibc module does not export (they need _GNU_SOURCE).
int tessera_direct_sync_flags(void);

/// O_DIRECT alone.
int tessera_direct_flags(void);

/// Reserves [offset, offset + length) of `fd` (Linux fallocate, mode 0; EINTR retried):
/// 0, or the errno (EOPNOTSUPP where the file system cannot reserve).
int tessera_reserve(int fd, long long offset, long long length);

/// Fixes glibc's mmap threshold at `bytes` (mallopt M_MMAP_THRESHOLD); returns 1 on success.
int tessera_set_mmap_threshold(int bytes);

/// Keeps freed blocks up to `bytes` in the heap for reuse (M_MMAP_THRESHOLD and
/// M_TRIM_THRESHOLD both at `bytes`); returns 1 on success.
int tessera_keep_freed_blocks(int bytes);

#include <spawn.h>

/// pipe2(fds, O_CLOEXEC).
int tessera_pipe_cloexec(int fds[2]);

/// posix_spawn_file_actions_addclosefrom_np: the child closes every descriptor from `from` up.
int tessera_spawn_close_from(posix_spawn_file_actions_t *actions, int from);

/// POSIX_SPAWN_SETSID: the child starts a session of its own.
short tessera_spawn_setsid_flag(void);
#endif
