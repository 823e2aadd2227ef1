// CRC32C (Castagnoli): SSE4.2 crc32 instructions when present, else a byte table.
#include "CTesseraSupport.h"
#include <pthread.h>
#include <string.h>

static uint32_t table[256];
static int have_sse42 = 0;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void init(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    have_sse42 = __builtin_cpu_supports("sse4.2") ? 1 : 0;
#endif
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        table[i] = c;
    }
}

static uint32_t crc_table(uint32_t c, const uint8_t *p, size_t n) {
    while (n--) c = table[(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static uint32_t crc_hw(uint32_t c, const uint8_t *p, size_t n) {
    uint64_t c64 = c;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c64 = __builtin_ia32_crc32di(c64, v);
        p += 8;
        n -= 8;
    }
    c = (uint32_t)c64;
    while (n--) c = __builtin_ia32_crc32qi(c, *p++);
    return c;
}
#endif

uint32_t tessera_crc32c(uint32_t crc, const void *data, size_t len) {
    pthread_once(&once, init);
    uint32_t c = ~crc;
#if defined(__x86_64__)
    if (have_sse42) return ~crc_hw(c, (const uint8_t *)data, len);
#endif
    return ~crc_table(c, (const uint8_t *)data, len);
}
