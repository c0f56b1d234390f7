/*
 * ftlab's instruction budget as one native block hook (issue #16).
 *
 * unicorn's `count=` budget is a per-instruction hook, which costs more than the tracing it
 * guards. This hook runs once per translated block instead: it adds the block's instruction
 * count (asked of Python once per distinct block, then kept here) and, once the total passes
 * the budget, asks the engine to stop. Deterministic: the same code stops at the same block
 * every run. The hook needs nothing from unicorn's headers: Python hands it uc_emu_stop.
 *
 * A tight loop enters a block every few instructions, so the common case is a leaf of a dozen
 * host instructions and one branch: the block found in a direct-mapped table of recent blocks,
 * its count added, the total compared with the run's limit. Everything else (a new block, a lab
 * hook, the insns clock, the stop) takes enter(). A loop of five-instruction blocks then costs
 * about 0.1x more than under an empty block hook, which alone costs unicorn 1.35-1.55x.
 *
 * Built by setuptools at install (pyproject's ext-modules, optional); loaded with ctypes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* budget.py's interface: it uses a library with this number only (an older build: unicorn's count) */
const int ftlab_budget_abi = 2;

typedef int (*emu_stop_fn)(void *uc);
typedef uint32_t (*count_fn)(uint64_t addr, uint32_t size);
typedef void (*call_fn)(uint64_t addr);

struct slot {
    uint64_t addr;
    uint32_t size; /* 0: empty */
    uint32_t insns;
};

/* The blocks entered lately, direct-mapped by address: the common path's only lookup. All zeros
 * is a true entry (the empty block at 0, which no lab hook can start at). */
#define RECENT 1024
#define SLOW (1u << 31) /* in a recent size: the block takes enter() (a lab hook, the insns clock) */
struct recent {
    uint64_t addr;
    uint32_t size;  /* | SLOW */
    uint16_t insns; /* a translated block holds at most 512 instructions (TCG_MAX_INSNS) */
    uint16_t call;  /* 1: a lab hook starts here */
};

struct ftlab_budget {
    uint64_t total;   /* instructions of every block entered since the hook was made */
    uint64_t limit;   /* stop once total passes it: the run's start plus its budget */
    uint64_t stopped; /* 1 once the budget stopped the run */
    /* The `insns` trace clock: where the guest reads the instructions entered (its ring buffer's
     * clock word), less a base; NULL: nowhere. */
    uint64_t *clock;
    uint64_t clock_base;
    unsigned shift; /* log2 of the instruction alignment: recent's index is addr >> shift */
    struct recent recent[RECENT];
    emu_stop_fn emu_stop;
    count_fn count; /* the instructions in a block not seen before */
    struct slot *slots; /* every block seen, by address and size: the count asked once each */
    uint64_t mask;      /* slots - 1, a power of two minus one */
    uint64_t used;
    /* The lab's own block hooks (Machine.hook_call), dispatched from here: unicorn calls a block
     * hook straight from translated code only when it is the only one, so one hook doing both is
     * cheap where two are not. Addresses in a small open-addressing set (0: empty). */
    call_fn call;
    uint64_t calls[256];
    uint64_t ncalls;
};

static uint64_t slot_of(uint64_t addr, uint32_t size, uint64_t mask)
{
    return ((addr ^ ((uint64_t)size << 40)) * 0x9E3779B97F4A7C15ull >> 20) & mask;
}

static int grow(struct ftlab_budget *b)
{
    uint64_t n = (b->mask + 1) * 2;
    struct slot *slots = calloc(n, sizeof *slots);
    if (!slots)
        return -1;
    for (uint64_t i = 0; i <= b->mask; i++) {
        struct slot *s = &b->slots[i];
        if (!s->size)
            continue;
        uint64_t j = slot_of(s->addr, s->size, n - 1);
        while (slots[j].size)
            j = (j + 1) & (n - 1);
        slots[j] = *s;
    }
    free(b->slots);
    b->slots = slots;
    b->mask = n - 1;
    return 0;
}

static uint64_t call_slot(uint64_t addr)
{
    return (addr * 0x9E3779B97F4A7C15ull) >> 56;
}

/* A lab hook at addr: 0, or -1 when the set is full (the caller keeps its own hook then). */
int ftlab_budget_add_call(struct ftlab_budget *b, uint64_t addr)
{
    if (!addr || 2 * (b->ncalls + 1) > 256)
        return -1;
    uint64_t i = call_slot(addr);
    while (b->calls[i] && b->calls[i] != addr)
        i = (i + 1) & 255;
    if (!b->calls[i]) {
        b->calls[i] = addr;
        b->ncalls++;
    }
    struct recent *r = &b->recent[(addr >> b->shift) & (RECENT - 1)];
    if (r->addr == addr) {
        r->size |= SLOW;
        r->call = 1;
    }
    return 0;
}

static int has_call(const struct ftlab_budget *b, uint64_t addr)
{
    for (uint64_t i = call_slot(addr); b->calls[i]; i = (i + 1) & 255)
        if (b->calls[i] == addr)
            return 1;
    return 0;
}

struct ftlab_budget *ftlab_budget_new(unsigned shift, emu_stop_fn emu_stop, count_fn count, call_fn call)
{
    struct ftlab_budget *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->mask = 4095;
    b->slots = calloc(b->mask + 1, sizeof *b->slots);
    if (!b->slots) {
        free(b);
        return NULL;
    }
    b->limit = UINT64_MAX;
    b->shift = shift;
    b->emu_stop = emu_stop;
    b->count = count;
    b->call = call;
    return b;
}

void ftlab_budget_free(struct ftlab_budget *b)
{
    free(b->slots);
    free(b);
}

/* Forget every block's count: the code changed (a patch site, a breakpoint). */
void ftlab_budget_forget(struct ftlab_budget *b)
{
    memset(b->slots, 0, (b->mask + 1) * sizeof *b->slots);
    memset(b->recent, 0, sizeof b->recent);
    b->used = 0;
}

/* Write the instructions entered from now on (less one: the guest adds one per record) into
 * *clock as each block begins: the guest's ring buffer stamps its records with them. NULL: stop. */
void ftlab_budget_clock(struct ftlab_budget *b, uint64_t *clock)
{
    memset(b->recent, 0, sizeof b->recent); /* each block learns anew whether it is SLOW */
    b->clock = clock;
    b->clock_base = b->total + 1;
    if (clock)
        *clock = b->total - b->clock_base;
}

/* A block not among the recent ones: its count from the table of every block, else asked. */
static __attribute__((noinline, cold)) void learn(struct ftlab_budget *b, struct recent *r, uint64_t addr,
                                                  uint32_t size)
{
    uint64_t i = slot_of(addr, size, b->mask);
    struct slot *s = &b->slots[i];
    while (s->size && (s->addr != addr || s->size != size)) {
        i = (i + 1) & b->mask;
        s = &b->slots[i];
    }
    uint32_t insns;
    if (s->size) {
        insns = s->insns;
    } else {
        insns = b->count(addr, size);
        if (2 * (b->used + 1) > b->mask + 1 && grow(b) == 0) {
            i = slot_of(addr, size, b->mask);
            while (b->slots[i].size)
                i = (i + 1) & b->mask;
        }
        if (2 * (b->used + 1) <= b->mask + 1) { /* else (out of memory) counted, not kept */
            b->slots[i].addr = addr;
            b->slots[i].size = size;
            b->slots[i].insns = insns;
            b->used++;
        }
    }
    r->addr = addr;
    r->insns = (uint16_t)insns;
    r->call = b->ncalls && has_call(b, addr);
    r->size = size | (r->call || b->clock ? SLOW : 0);
}

/* The whole of a block's entry: a lab hook, the clock, the count, the stop. */
static __attribute__((noinline)) void enter(void *uc, uint64_t addr, uint32_t size, struct ftlab_budget *b,
                                            struct recent *r)
{
    if (r->addr != addr || (r->size & ~SLOW) != size)
        learn(b, r, addr, size);
    uint64_t insns = r->insns; /* before the lab's hook, which may forget every count */
    if (r->call)
        b->call(addr);
    if (b->clock) /* the instructions before this block, as the guest's clock (+1 per record) */
        *b->clock = b->total - b->clock_base;
    b->total += insns;
    if (b->total > b->limit && !b->stopped) {
        b->stopped = 1;
        b->emu_stop(uc);
    }
}

/* UC_HOOK_BLOCK's callback: void (uc_engine *, uint64_t address, uint32_t size, void *user_data).
 * Run once per block entered, so its common path (a recent block, not SLOW, within the budget) is
 * a leaf with one branch. */
void ftlab_budget_block(void *uc, uint64_t addr, uint32_t size, void *data)
{
    struct ftlab_budget *b = data;
    struct recent *r = &b->recent[(addr >> b->shift) & (RECENT - 1)];
    uint64_t total = b->total + r->insns;
    if (__builtin_expect(((r->addr ^ addr) | (r->size ^ size) | (total > b->limit)) == 0, 1))
        b->total = total;
    else
        enter(uc, addr, size, b, r);
}
