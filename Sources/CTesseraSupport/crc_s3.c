// CRC32 (ISO-HDLC, as zlib computes it) and CRC64/NVME, the checksums S3 clients send
// with uploads. Reflected table-driven CRCs, eight bytes per step ("slicing by eight").
#include "CTesseraSupport.h"
#include <pthread.h>

static uint32_t crc32_table[8][256];
static uint64_t crc64_table[8][256];
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static void make_tables(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        uint64_t d = i;
        for (int k = 0; k < 8; k++) {
            c = (c & 1) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
            d = (d & 1) ? (d >> 1) ^ 0x9A6C9329AC4BC9B5ull : d >> 1;
        }
        crc32_table[0][i] = c;
        crc64_table[0][i] = d;
    }
    for (int t = 1; t < 8; t++) {
        for (int i = 0; i < 256; i++) {
            uint32_t c = crc32_table[t - 1][i];
            crc32_table[t][i] = (c >> 8) ^ crc32_table[0][c & 0xFF];
            uint64_t d = crc64_table[t - 1][i];
            crc64_table[t][i] = (d >> 8) ^ crc64_table[0][d & 0xFF];
        }
    }
}

uint32_t tessera_crc32(uint32_t crc, const void *data, size_t len) {
    pthread_once(&tables_once, make_tables);
    const uint8_t *p = data;
    uint32_t c = ~crc;
    while (len >= 8) {
        uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
        uint32_t hi = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
        c = crc32_table[7][lo & 0xFF] ^ crc32_table[6][(lo >> 8) & 0xFF] ^ crc32_table[5][(lo >> 16) & 0xFF] ^ crc32_table[4][lo >> 24] ^
            crc32_table[3][hi & 0xFF] ^ crc32_table[2][(hi >> 8) & 0xFF] ^ crc32_table[1][(hi >> 16) & 0xFF] ^ crc32_table[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len--) c = (c >> 8) ^ crc32_table[0][(c ^ *p++) & 0xFF];
    return ~c;
}

uint64_t tessera_crc64nvme(uint64_t crc, const void *data, size_t len) {
    pthread_once(&tables_once, make_tables);
    const uint8_t *p = data;
    uint64_t c = ~crc;
    while (len >= 8) {
        uint64_t v = 0;
        for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
        c ^= v;
        c = crc64_table[7][c & 0xFF] ^ crc64_table[6][(c >> 8) & 0xFF] ^ crc64_table[5][(c >> 16) & 0xFF] ^ crc64_table[4][(c >> 24) & 0xFF] ^
            crc64_table[3][(c >> 32) & 0xFF] ^ crc64_table[2][(c >> 40) & 0xFF] ^ crc64_table[1][(c >> 48) & 0xFF] ^ crc64_table[0][c >> 56];
        p += 8;
        len -= 8;
    }
    while (len--) c = (c >> 8) ^ crc64_table[0][(c ^ *p++) & 0xFF];
    return ~c;
}
