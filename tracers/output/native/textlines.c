/*
 * The function and function_graph tracers' text lines in bulk, from their ring-buffer records
 * (issue #16): the same bytes as TextSink.entries and GraphTextSink.records' Python, which stays
 * the reference and the fallback.
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

/* native_text.py uses a library with this number only (an older build: the Python lines) */
const int ftlab_textlines_abi = 2;

enum { REC_UNCOMMITTED, REC_ENTRY }; /* records.py; any other type is an exit, as GraphDecoder reads it */

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

/* The body of a pair, asked of Python the first time: NULL when it could not be had. */
static const struct body *body_of(struct textlines *t, uint64_t ip, uint64_t parent)
{
    struct body *b = find(t, ip, parent);
    if (!b->text) {
        t->miss(ip, parent);
        b = find(t, ip, parent);
        if (!b->text)
            return NULL;
    }
    return b;
}

/* v in decimal at p: the end of the digits. */
static char *put_u64(char *p, uint64_t v)
{
    char digits[20];
    int d = 0;
    do {
        digits[d++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (d)
        *p++ = digits[--d];
    return p;
}

static char *put(char *p, const char *s, uint32_t len)
{
    memcpy(p, s, len);
    return p + len;
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
        if (rec[0] == REC_UNCOMMITTED)
            continue;
        const struct body *b = body_of(t, rec[2], rec[3]);
        if (!b)
            return -1;
        if (end - p < (int64_t)(t->prefix_len + 22 + b->len))
            return -2;
        p = put(p, t->prefix, t->prefix_len);
        char ts[20];
        int d = (int)(put_u64(ts, rec[1]) - ts);
        for (int pad = 12 - d; pad > 0; pad--)
            *p++ = ' ';
        p = put(p, ts, (uint32_t)d);
        *p++ = ':';
        *p++ = ' ';
        p = put(p, b->text, b->len);
        count++;
    }
    *lines = count;
    return p - out;
}

/*
 * function_graph's lines (GraphTextSink's, which stays the reference and the fallback): the
 * bodies are the functions' names, keyed (ip, 0), and the prefix is the CPU column.
 */
struct graph_options {
    uint64_t ret_word, calltime_word; /* an exit record's return value and calltime */
    uint32_t retval, tail;            /* funcgraph-retval, funcgraph-tail */
    uint32_t unit_len, ret_len;
    char unit[16]; /* the clock's unit: "ev", "insn" */
    char ret[8];   /* what precedes a return value: "ret=" since 6.13, "= " before */
};

/* What the text carries from one record to the next (GraphTextSink._held and _depth). */
struct graph_state {
    uint64_t held, held_ip, held_depth; /* an entry held back until the next record shows if it is a leaf */
    int64_t depth;                      /* the depth of the last line, where a comment after it goes */
};

/* trace_find_mark(): the duration column's mark (MARKS in sinks.py) */
static char mark(uint64_t duration)
{
    static const struct {
        uint64_t limit;
        char mark;
    } marks[] = {{1000000000, '$'}, {100000000, '@'}, {10000000, '*'}, {1000000, '#'}, {100000, '!'}, {10000, '+'}};
    for (unsigned i = 0; i < sizeof marks / sizeof *marks; i++)
        if (duration > marks[i].limit)
            return marks[i].mark;
    return ' ';
}

/*
 * The line up to its text: CPU, the duration column (an exit's ts - calltime, exact as Python's
 * integers; blank for an entry), the bar, the depth's indent.
 */
static char *line_start(char *p, const struct textlines *t, const struct graph_options *o, const uint64_t *exit,
                        uint64_t depth)
{
    p = put(p, t->prefix, t->prefix_len);
    if (!exit) {
        memset(p, ' ', 14);
        p += 14;
    } else {
        uint64_t ts = exit[1], calltime = exit[o->calltime_word];
        *p++ = ts < calltime ? ' ' : mark(ts - calltime);
        *p++ = ' ';
        char *column = p;
        if (ts < calltime)
            *p++ = '-';
        p = put_u64(p, ts < calltime ? calltime - ts : ts - calltime);
        *p++ = ' ';
        p = put(p, o->unit, o->unit_len);
        *p++ = ' ';
        while (p - column < 12)
            *p++ = ' ';
    }
    p = put(p, "|  ", 3);
    memset(p, ' ', 2 * depth);
    return p + 2 * depth;
}

/* v in hex with 0x at p: the end. */
static char *put_hex(char *p, uint64_t v)
{
    char digits[16];
    int d = 0;
    do {
        digits[d++] = "0123456789abcdef"[v & 15];
        v >>= 4;
    } while (v);
    *p++ = '0';
    *p++ = 'x';
    while (d)
        *p++ = digits[--d];
    return p;
}

/* graph_retval(): an error code (-4095..-1, also as a 32-bit int) in decimal, anything else in hex. */
static char *put_retval(char *p, uint64_t v)
{
    if ((v >> 31 & 1) && v >> 32 == 0)
        v |= 0xFFFFFFFF00000000ull;
    if ((int64_t)v < 0 && (int64_t)v >= -4095) {
        *p++ = '-';
        return put_u64(p, -v);
    }
    return put_hex(p, v);
}

/* An entry's line once it is known not to be a leaf: `func() {`. */
static char *open_line(char *p, const struct textlines *t, const struct graph_options *o, uint64_t depth,
                       const struct body *name)
{
    p = line_start(p, t, o, NULL, depth);
    p = put(p, name->text, name->len);
    return put(p, "() {\n", 5);
}

/*
 * Room for a line of a function at depth: its fixed columns, the indent, the name once, a comment.
 * fgraph's shadow stack bounds a trace's depths (replay refuses a recording's deeper records before
 * any text); past that, more than any buffer, without overflowing.
 */
static uint64_t room(const struct textlines *t, const struct graph_options *o, uint64_t depth, const struct body *name)
{
    if (depth > UINT32_MAX)
        return UINT64_MAX / 2;
    return t->prefix_len + 2 * depth + name->len + o->unit_len + o->ret_len + 96;
}

/*
 * Lines for n records, as textlines_format, from and into *state (changed only on success);
 * counts[0] and [1] get the entries and exits.
 */
int64_t graphlines_format(struct textlines *t, const struct graph_options *o, struct graph_state *state,
                          const uint64_t *records, uint64_t n, uint64_t words, char *out, uint64_t cap,
                          uint64_t *counts)
{
    struct graph_state s = *state;
    struct body held = {0}; /* the held entry's name (a copy: a miss may move the table) */
    if (s.held) {
        const struct body *b = body_of(t, s.held_ip, 0);
        if (!b)
            return -1;
        held = *b;
    }
    char *p = out, *end = out + cap;
    uint64_t entries = 0, exits = 0;
    for (uint64_t r = 0; r < n; r++) {
        const uint64_t *rec = records + r * words;
        if (rec[0] == REC_UNCOMMITTED)
            continue;
        uint64_t ip = rec[2], depth = rec[4];
        const struct body *b = body_of(t, ip, 0);
        if (!b)
            return -1;
        struct body name = *b;
        if ((uint64_t)(end - p) < (s.held ? room(t, o, s.held_depth, &held) : 0) + room(t, o, depth, &name))
            return -2;
        int leaf = s.held && rec[0] != REC_ENTRY && s.held_ip == ip && s.held_depth == depth;
        if (s.held && !leaf) {
            p = open_line(p, t, o, s.held_depth, &held);
            s.depth = (int64_t)s.held_depth; /* comments inside it go one deeper */
        }
        s.held = 0;
        if (rec[0] == REC_ENTRY) {
            s.held = 1;
            s.held_ip = ip;
            s.held_depth = depth;
            held = name;
            entries++;
            continue;
        }
        p = line_start(p, t, o, rec, depth);
        if (leaf) {
            p = put(p, name.text, name.len);
            p = put(p, "();", 3);
            if (o->retval) {
                p = put(p, " /* ", 4);
                p = put(p, o->ret, o->ret_len);
                p = put_retval(p, rec[o->ret_word]);
                p = put(p, " */", 3);
            }
        } else {
            *p++ = '}';
            if (o->retval || o->tail) {
                p = put(p, " /* ", 4);
                p = put(p, name.text, name.len);
                if (o->retval) {
                    *p++ = ' ';
                    p = put(p, o->ret, o->ret_len);
                    p = put_retval(p, rec[o->ret_word]);
                }
                p = put(p, " */", 3);
            }
        }
        *p++ = '\n';
        s.depth = (int64_t)depth - 1; /* comments after a leaf or a `}` go at its own level */
        exits++;
    }
    *state = s;
    counts[0] = entries;
    counts[1] = exits;
    return p - out;
}

/*
 * Probe events' lines (TextSink.probe_lines' Python stays the reference and the fallback), from
 * the guest handlers' records (probe_records.py): the context prefix of the record's flags word,
 * the timestamp, the event's `name: (where)` head, then each fetcharg's ` name=value`. Three kinds
 * of tables, each a textlines of bodies Python makes on a miss: the prefixes by flags word (keyed
 * (flags, 0)), the %pS texts of symbol values (keyed (addr, 0)) and per event the heads (keyed
 * (ip, 0) at an entry, (ip, parent) at an exit).
 */
enum { ARG_U, ARG_S, ARG_X, ARG_SYMBOL }; /* NativeProbeLines.KINDS */
#define PROBE_TYPES 16                    /* the record types a probe layout can name */

/* Where a record's words are (ProbeDecoder's layout): by record type, where its fetched words
 * begin (0: not a probe record), and whether its head shows the parent (a return's) and it counts
 * as an exit. */
struct probe_layout {
    uint64_t words, event, ip, parent, faults, flags;
    uint64_t fetch[PROBE_TYPES];
    uint64_t exits; /* a bit per record type */
};

struct probe_event {
    struct textlines *heads;
    uint32_t nargs;
    uint8_t *args; /* per fetcharg: kind, bits, the label's length (u16 LE), the label ` name=` */
};

struct probelines {
    struct textlines *contexts, *symbols;
    struct probe_layout layout;
    uint32_t nevents;
    struct probe_event *events;
};

struct probelines *probelines_new(struct textlines *contexts, struct textlines *symbols,
                                  const struct probe_layout *layout, uint32_t nevents)
{
    struct probelines *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->events = calloc(nevents ? nevents : 1, sizeof *p->events);
    if (!p->events) {
        free(p);
        return NULL;
    }
    p->contexts = contexts;
    p->symbols = symbols;
    p->layout = *layout;
    p->nevents = nevents;
    return p;
}

void probelines_free(struct probelines *p)
{
    for (uint32_t e = 0; e < p->nevents; e++)
        free(p->events[e].args);
    free(p->events);
    free(p);
}

/* Event e's head table and its fetchargs, encoded as struct probe_event's args: 0, or -1. */
int probelines_set_event(struct probelines *p, uint32_t e, struct textlines *heads, uint32_t nargs,
                         const uint8_t *args, uint32_t len)
{
    uint8_t *copy = malloc(len ? len : 1);
    if (e >= p->nevents || !copy) {
        free(copy);
        return -1;
    }
    memcpy(copy, args, len);
    free(p->events[e].args);
    p->events[e] = (struct probe_event){heads, nargs, copy};
    return 0;
}

/* A fetched word as its type prints it (format_value): cut to its bits, %u, %d or 0x%x. */
static char *put_value(char *p, uint8_t kind, uint8_t bits, uint64_t raw)
{
    uint64_t v = bits < 64 ? raw & ((1ull << bits) - 1) : raw;
    if (kind == ARG_X)
        return put_hex(p, v);
    if (kind == ARG_S && bits && v >> (bits - 1) & 1) {
        *p++ = '-';
        return put_u64(p, (bits < 64 ? (1ull << bits) : 0) - v); /* the magnitude, wrapping at 64 bits */
    }
    return put_u64(p, v);
}

/* Whether fetch i faulted: a bit each in the faults word (none past its 64). */
static int faulted(uint64_t faults, uint32_t i)
{
    return i < 64 && faults >> i & 1;
}

#define FAULT_TEXT "(fault)"
#define VALUE_ROOM 22 /* a value's widest decimal or hex text ("(fault)" included) */

/*
 * Lines for records [start, n) of chunk (each layout.words words), into out (cap bytes), until a
 * record of a type the layout does not name, other than uncommitted (skipped): *done is its index
 * (n when none). counts[e] gets event e's lines, counts[nevents] and [nevents + 1] the entries' and
 * the exits'. Returns the bytes written, -1 or -2 as textlines_format.
 */
int64_t probelines_format(struct probelines *p, const uint64_t *records, uint64_t start, uint64_t n, char *out,
                          uint64_t cap, uint64_t *done, uint64_t *counts)
{
    const struct probe_layout *l = &p->layout;
    char *pos = out, *end = out + cap;
    memset(counts, 0, (p->nevents + 2) * sizeof *counts);
    uint64_t r = start;
    for (; r < n; r++) {
        const uint64_t *rec = records + r * l->words;
        if (rec[0] == REC_UNCOMMITTED)
            continue;
        if (rec[0] >= PROBE_TYPES || !l->fetch[rec[0]] || rec[l->event] >= p->nevents)
            break;
        int exit = l->exits >> rec[0] & 1;
        const struct probe_event *ev = &p->events[rec[l->event]];
        const struct body *context = body_of(p->contexts, rec[l->flags], 0);
        const struct body *head = context ? body_of(ev->heads, rec[l->ip], exit ? rec[l->parent] : 0) : NULL;
        if (!head)
            return -1;
        /* the room: the symbols' texts looked up first (their table moves on a miss, not the others) */
        uint64_t need = context->len + 14 + head->len + 1;
        const uint64_t *fetch = rec + l->fetch[rec[0]];
        const uint8_t *a = ev->args;
        for (uint32_t i = 0; i < ev->nargs; i++) {
            uint32_t label = a[2] | (uint32_t)a[3] << 8;
            need += label + VALUE_ROOM;
            if (a[0] == ARG_SYMBOL && !faulted(rec[l->faults], i)) {
                const struct body *sym = body_of(p->symbols, fetch[i], 0);
                if (!sym)
                    return -1;
                need += sym->len;
            }
            a += 4 + label;
        }
        if ((uint64_t)(end - pos) < need)
            return -2;
        pos = put(pos, context->text, context->len);
        char ts[20];
        int d = (int)(put_u64(ts, rec[1]) - ts);
        for (int pad = 12 - d; pad > 0; pad--)
            *pos++ = ' ';
        pos = put(pos, ts, (uint32_t)d);
        *pos++ = ':';
        *pos++ = ' ';
        pos = put(pos, head->text, head->len);
        a = ev->args;
        for (uint32_t i = 0; i < ev->nargs; i++) {
            uint32_t label = a[2] | (uint32_t)a[3] << 8;
            pos = put(pos, (const char *)a + 4, label);
            if (faulted(rec[l->faults], i))
                pos = put(pos, FAULT_TEXT, sizeof FAULT_TEXT - 1);
            else if (a[0] == ARG_SYMBOL) {
                const struct body *sym = find(p->symbols, fetch[i], 0); /* there: looked up above */
                pos = put(pos, sym->text, sym->len);
            } else
                pos = put_value(pos, a[0], a[1], fetch[i]);
            a += 4 + label;
        }
        *pos++ = '\n';
        counts[rec[l->event]]++;
        counts[p->nevents + exit]++;
    }
    *done = r;
    return pos - out;
}
