/*
 * The function tracer's text lines in bulk, from its ring-buffer records (issue #16): the same
 * bytes as TextSink.entries in Python, which stays the reference and the fallback.
 *
 * Each record is (type, ts, ip, parent, ...) as u64 words; an uncommitted record (type 0) is
 * skipped. A line is the fixed context prefix, the timestamp right-aligned in 12 columns, ": ",
 * and the `func <-parent\n` body of its (ip, parent) pair. Bodies are made by Python (symbol
 * lookup is the lab's, not re-implemented here): the first time a pair is seen, the miss callback
 * asks Python, which hands the body back through textlines_add_body.
 *
 * Built by setuptools at install (pyproject's ext-modules, optional); loaded with ctypes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef void (*miss_fn)(uint64_t ip, uint64_t parent);

struct body {
    uint64_t ip, parent;
    char *text; /* NULL: empty slot */
    uint32_t len;
};

struct textlines {
    miss_fn miss;
    struct body *bodies;
    uint64_t mask, used;
    char prefix[64];
    uint32_t prefix_len;
};

static uint64_t pair_slot(uint64_t ip, uint64_t parent, uint64_t mask)
{
    return ((ip * 0x9E3779B97F4A7C15ull) ^ (parent * 0xC2B2AE3D27D4EB4Full)) >> 17 & mask;
}

struct textlines *textlines_new(miss_fn miss, const char *prefix, uint32_t prefix_len)
{
    struct textlines *t = calloc(1, sizeof *t);
    if (!t || prefix_len > sizeof t->prefix)
        goto fail;
    t->mask = 1023;
    t->bodies = calloc(t->mask + 1, sizeof *t->bodies);
    if (!t->bodies)
        goto fail;
    t->miss = miss;
    memcpy(t->prefix, prefix, prefix_len);
    t->prefix_len = prefix_len;
    return t;
fail:
    if (t)
        free(t->bodies);
    free(t);
    return NULL;
}

void textlines_free(struct textlines *t)
{
    for (uint64_t i = 0; i <= t->mask; i++)
        free(t->bodies[i].text);
    free(t->bodies);
    free(t);
}

static struct body *find(struct textlines *t, uint64_t ip, uint64_t parent)
{
    uint64_t i = pair_slot(ip, parent, t->mask);
    while (t->bodies[i].text && (t->bodies[i].ip != ip || t->bodies[i].parent != parent))
        i = (i + 1) & t->mask;
    return &t->bodies[i];
}

static int grow(struct textlines *t)
{
    uint64_t n = (t->mask + 1) * 2;
    struct body *old = t->bodies, *bodies = calloc(n, sizeof *bodies);
    if (!bodies)
        return -1;
    uint64_t old_mask = t->mask;
    t->bodies = bodies;
    t->mask = n - 1;
    for (uint64_t i = 0; i <= old_mask; i++)
        if (old[i].text)
            *find(t, old[i].ip, old[i].parent) = old[i];
    free(old);
    return 0;
}

/* The body of a pair, from Python (called from its miss callback): 0, or -1 out of memory. */
int textlines_add_body(struct textlines *t, uint64_t ip, uint64_t parent, const char *text, uint32_t len)
{
    if (2 * (t->used + 1) > t->mask + 1 && grow(t) != 0)
        return -1;
    struct body *b = find(t, ip, parent);
    if (b->text)
        return 0;
    b->text = malloc(len ? len : 1);
    if (!b->text)
        return -1;
    memcpy(b->text, text, len);
    b->ip = ip;
    b->parent = parent;
    b->len = len;
    t->used++;
    return 0;
}

/*
 * Lines for n records of `words` u64 words each, into out (cap bytes). Returns the bytes
 * written (and *lines the lines), -1 when a body could not be had (Python raised, or memory ran
 * out), -2 when out is too small (the bodies found so far are kept: call again with more room).
 */
int64_t textlines_format(struct textlines *t, const uint64_t *records, uint64_t n, uint64_t words, char *out,
                         uint64_t cap, uint64_t *lines)
{
    char *p = out, *end = out + cap;
    uint64_t count = 0;
    for (uint64_t r = 0; r < n; r++) {
        const uint64_t *rec = records + r * words;
        if (rec[0] == 0) /* REC_UNCOMMITTED */
            continue;
        uint64_t ts = rec[1], ip = rec[2], parent = rec[3];
        struct body *b = find(t, ip, parent);
        if (!b->text) {
            t->miss(ip, parent);
            b = find(t, ip, parent);
            if (!b->text)
                return -1;
        }
        if (end - p < (int64_t)(t->prefix_len + 22 + b->len))
            return -2;
        memcpy(p, t->prefix, t->prefix_len);
        p += t->prefix_len;
        char digits[20];
        int d = 0;
        do {
            digits[d++] = (char)('0' + ts % 10);
            ts /= 10;
        } while (ts);
        for (int pad = 12 - d; pad > 0; pad--)
            *p++ = ' ';
        while (d)
            *p++ = digits[--d];
        *p++ = ':';
        *p++ = ' ';
        memcpy(p, b->text, b->len);
        p += b->len;
        count++;
    }
    *lines = count;
    return p - out;
}
