/*
 * context.h — the layout of a context (cctx_context) and the operations the
 * rest of the runtime uses on it.
 *
 * Invariants:
 * - `root` is the context's map (a HAMT root, NULL when empty). It is
 *   replaced, never mutated: a writer builds a new root by path copying and
 *   publishes it with one atomic exchange. The context holds one reference
 *   to the root it points at.
 * - Writers are serialized by `owner` (the state machine below). Only the
 *   owner writes `root`.
 * - Readers on other threads never block the writer and never see freed
 *   memory: they read the root under a hazard pointer (reclaim.h), after
 *   marking the context `shared_reads` once (a sticky flag: a plain store
 *   the first time, a load ever after, so readers of a popular context
 *   write no line they share). A writer that replaces a root releases it
 *   at once when no other thread ever read the context, or when no hazard
 *   names it; otherwise it retires it through reclaim.h (context.c,
 *   read_begin, argues the fences).
 * - `prev` is meaningful only while entered by a thread: the context that
 *   was that thread's current one before the enter. Only that thread
 *   touches it.
 *
 * The owner state machine. `owner` is one word; only the context_owner_*
 * functions and cctx_context_release in context.c write it.
 *
 *   state            value                  may write root / enter
 *   FREE             CCTX_OWNER_NONE        nobody / anyone may enter
 *   LEFT(ts)         ts|CCTX_OWNER_LEFT     nobody / anyone (free, but
 *                                           biased: see below)
 *   ENTERED(ts)      the thread state ts    thread ts only / nobody else
 *                    (|HELD: see below)
 *   CLAIMED          CCTX_OWNER_CLAIMED     the claiming task / nobody
 *   WRITING          CCTX_OWNER_WRITING     one explicit write / nobody
 *   REVOKING         CCTX_OWNER_REVOKING    nobody / nobody (a thread is
 *                                           taking a LEFT(ts) context)
 *
 *   transition          from -> to             who, how
 *   enter               FREE -> ENTERED(ts)    thread ts: context_owner_enter
 *                                              (CAS)
 *   biased enter        LEFT(ts) ->            thread ts: plain stores, inside
 *                         ENTERED(ts)          its `bias_entering` window
 *   take as base        new  -> ENTERED(ts)    thread ts: context_owner_adopt
 *                                              (plain: nobody else has it)
 *   exit                ENTERED(ts)[|HELD]     thread ts: context_owner_leave
 *                         -> LEFT(ts) when ts  (release store, then a look
 *                         also made the exit   at the handover list;
 *                         before (`bias_last`), _base: FREE, no look)
 *                         else -> FREE
 *   last release by ts  ENTERED(ts) ->         thread ts: cctx_context_release
 *     while entered       ENTERED(ts)|HELD     (plain store: only ts writes
 *                                              an ENTERED(ts) word)
 *   last release by     ENTERED(ts) stays      the releasing thread: puts the
 *     another thread      ENTERED(ts)          context on the handover list
 *     while entered                            (context.c); `owner` is not
 *                                              written
 *   take from a bias    LEFT(ts) -> X          ts itself: CAS, as from FREE.
 *     (X: ENTERED(r),                          Another thread r: CAS to
 *     CLAIMED, WRITING)                        REVOKING, membarrier, wait for
 *                                              ts's window, then X by store,
 *                                              or give up if ts entered
 *                                              (context.c, "The bias")
 *   claim               FREE|LEFT -> CLAIMED   context_owner_claim (CAS)
 *   unclaim             CLAIMED -> FREE        context_owner_unclaim (CAS)
 *   one-off write       FREE|LEFT -> WRITING   context_owner_write_begin (CAS)
 *   write done          WRITING -> FREE        context_owner_write_end (store)
 *
 * Every other transition is refused (CCTX_ALREADY_ENTERED or
 * CCTX_NOT_ENTERED to the caller; REVOKING counts as taken, since every
 * revoke ends in a taken state). Because nobody but ts writes an
 * ENTERED(ts) word (the CAS of every other transition expects FREE,
 * LEFT or CLAIMED, so it fails without writing), ts's exit needs no locked
 * instruction. The release store at exit/write-end orders this owner's
 * writes before the next owner's, whose CAS acquires. Who drops a
 * reference released while the context is entered is context.c's
 * "handover" essay; why a LEFT(ts) word lets ts enter without a CAS, and
 * why at most one thread ever holds the bias of a context object between
 * its creation and its free, is "The bias".
 */
#ifndef CCTX_CONTEXT_H
#define CCTX_CONTEXT_H

#ifndef CCTX_BUILDING_CORE
#error "context.h is internal to CContextCore"
#endif

#include "hamt.h"

#define CCTX_CONTEXT_MAGIC 0x43435458u /* "CCTX" */

#define CCTX_OWNER_NONE ((uintptr_t)0)
#define CCTX_OWNER_CLAIMED ((uintptr_t)1)
#define CCTX_OWNER_WRITING ((uintptr_t)2)
#define CCTX_OWNER_REVOKING ((uintptr_t)3)

typedef struct cctx_thread_state cctx_thread_state;

struct cctx_context {
    /* First: a free object in a thread's cache (context.c) keeps its link
     * here, so the fields below keep the values a free object has (magic
     * 0, refcnt 1, shared_reads 0) and a reuse rewrites only root, magic and
     * owner. */
    hamt_node *root;
    uint32_t magic;
    unsigned refcnt;
    uintptr_t owner;
    cctx_context *prev;
    /* 0 until a thread other than the writer reads the context (read_begin
     * in context.c), then 1 until the object is freed. */
    unsigned shared_reads;
    /* Non-zero while the thread that holds the bias (LEFT) is inside its
     * biased enter; written only by that thread (context.c, "The bias"). */
    unsigned bias_entering;
    /* While on the handover list (context.c): its link, and the thread
     * whose count includes it. Else unused. */
    cctx_context *handover_next;
    cctx_thread_state *handover_ts;
    /* The thread that made the last exit, CCTX_BIAS_NEVER once a bias was
     * revoked; read and written by the owner only ("The bias"), and reset
     * when the object is freed. */
    cctx_thread_state *bias_last;
    /* The context's identity for tokens (token.h): 0 until the first
     * token is made in it, then a number no other context object, past or
     * future, ever has (context_serial). Written and read by the writer
     * only; 0 again when the object is freed, so a reuse of the object
     * (the same address) is a different context to every token. */
    uint64_t serial;
};

#define CCTX_BIAS_NEVER ((cctx_thread_state *)1)

static inline bool context_is_valid(const cctx_context *ctx)
{
    return ctx != NULL && ctx->magic == CCTX_CONTEXT_MAGIC;
}

/* ------------------------------------------------------------ root */

/* Bit 0 of `root` is set while the writer overwrites a value in place
 * (context.c's in-place handshake). Readers on other threads wait for it
 * to clear; the writer's own reads (and a signal handler on its thread)
 * mask it. */
#define CCTX_ROOT_IN_PLACE ((uintptr_t)1)
/* Bit 1 of `root`: the context's reference to its root is a loan from the
 * shared credits of the thread that made the copy (hamt.h), not a counted
 * one. It is given back with hamt_credit_give, and nobody installs credits
 * from such a root (hamt.c, "Shared credits": credits need a counted
 * reference behind them). Read with the root in one load. */
#define CCTX_ROOT_LOAN ((uintptr_t)2)
#define CCTX_ROOT_TAGS (CCTX_ROOT_IN_PLACE | CCTX_ROOT_LOAN)

/* The root as its writer (or a signal handler on the writer's thread)
 * reads it: no other thread replaces it. */
static inline hamt_node *context_own_root(const cctx_context *ctx)
{
    uintptr_t raw = (uintptr_t)cctx_load_ptr(&((cctx_context *)ctx)->root);
    return (hamt_node *)(raw & ~CCTX_ROOT_TAGS);
}

/* ------------------------------------------------------------ owner */

/* Bit 0 of an ENTERED(ts) owner: the context's last reference was released
 * while entered and the entered state holds it (context.c). Thread states
 * are aligned, so ts|HELD is never one of the small constants above. */
#define CCTX_OWNER_HELD ((uintptr_t)1)

/* Bit 1 of a thread state's address: LEFT(ts), free but biased to ts.
 * Thread states are allocated 16-aligned. */
#define CCTX_OWNER_LEFT ((uintptr_t)2)

/* Whether an `owner` word is ENTERED(ts)[|HELD] / LEFT(ts). */
static inline bool owner_is_entered(uintptr_t owner)
{
    return owner > CCTX_OWNER_REVOKING && (owner & CCTX_OWNER_LEFT) == 0;
}
static inline bool owner_is_left(uintptr_t owner)
{
    return owner > CCTX_OWNER_REVOKING && (owner & CCTX_OWNER_LEFT) != 0;
}

/* The owner's state, without the HELD mark; LEFT(ts) reads as FREE. */
static inline uintptr_t context_owner(const cctx_context *ctx)
{
    uintptr_t owner = cctx_load_uintptr(&((cctx_context *)ctx)->owner);
    if (owner <= CCTX_OWNER_REVOKING)
        return owner;
    return (owner & CCTX_OWNER_LEFT) ? CCTX_OWNER_NONE : owner & ~CCTX_OWNER_HELD;
}
bool context_owner_enter(cctx_context *ctx, cctx_thread_state *ts) CCTX_HIDDEN;
void context_owner_adopt(cctx_context *ctx, cctx_thread_state *ts) CCTX_HIDDEN;
void context_owner_leave(cctx_context *ctx, cctx_thread_state *ts) CCTX_HIDDEN;
/* The same for a thread's base context (thread_state.c): no look at the
 * handover list (context.c). */
void context_owner_leave_base(cctx_context *ctx, cctx_thread_state *ts) CCTX_HIDDEN;

/* Called by a thread's teardown after its last exit, before its state is
 * freed: waits until no releasing thread can still write the state's
 * handover count (context.c, "The handover"). */
void context_handover_quiesce(cctx_thread_state *ts) CCTX_HIDDEN;

/* Chooses how exits order their `owner` store before their look at the
 * handover list (context.c): called once, before any thread state exists
 * (thread_state.c's one-time setup). */
void context_barrier_init(void) CCTX_HIDDEN;
/* The handover list's lock in the fork handlers (reclaim.c takes every
 * lock of the runtime in one order): take / give back. */
void context_atfork_prepare(void) CCTX_HIDDEN;
void context_atfork_release(void) CCTX_HIDDEN;
/* In the child (one thread): give back, and make sure the exits' barrier
 * mode holds there too. */
void context_atfork_child(void) CCTX_HIDDEN;
/* In the child, for the state of each thread that did not survive the
 * fork: its root credits are given back at the child's next grace period
 * (reclaim.c's fork handler). */
void context_fork_orphan_credits(cctx_thread_state *dead) CCTX_HIDDEN;

/* ------------------------------------------------------------ contexts */

/* A new context holding `root` (the reference is transferred to it). On
 * CCTX_ENOMEM the caller keeps its reference. */
cctx_status context_new_with_root(hamt_node *root, cctx_context **out) CCTX_HIDDEN;

/* Frees the calling thread's cache of context objects; called by the
 * thread-state teardown once the state is detached (nothing refills it). */
void context_cache_drain(void) CCTX_HIDDEN;

/* Publishes `new_root` (reference transferred) in place of the current
 * root, and disposes of the old one (reclaim.h). `ts` is the calling
 * thread's state (the writer's). */
void context_publish(cctx_thread_state *ts, cctx_context *ctx,
                     hamt_node *new_root) CCTX_HIDDEN;

/* A reference to the context's current root, taken safely from any thread
 * (also one whose state cannot be created: context.c). Always CCTX_OK. */
cctx_status context_snapshot(cctx_context *ctx, hamt_node **out) CCTX_HIDDEN;

/* The writes behind cctx_var_set/reset and cctx_context_set/reset (and
 * the *_set_light pair: `light`, token.h); the caller has checked the
 * arguments and holds write ownership. */
cctx_status context_write_set(cctx_thread_state *ts, cctx_context *ctx, cctx_var *var,
                              void *value, bool light, cctx_token **token_out) CCTX_HIDDEN;
cctx_status context_write_reset(cctx_thread_state *ts, cctx_context *ctx, cctx_var *var,
                                cctx_token *token) CCTX_HIDDEN;

/* ------------------------------------------------------------ switching */

/* Enters `ctx` on thread `ts` (CCTX_ALREADY_ENTERED if it is not free). */
cctx_status context_enter(cctx_thread_state *ts, cctx_context *ctx) CCTX_HIDDEN;
/* Leaves the innermost context `ts` has entered (not its base). */
void context_exit_innermost(cctx_thread_state *ts) CCTX_HIDDEN;
/* Leaves every context entered after `ctx`, which stays entered. */
void context_exit_above(cctx_thread_state *ts, cctx_context *ctx) CCTX_HIDDEN;
/* The side effects of any change of `ts`'s current context or of its
 * current mapping: the lookup cache forgets, watchers hear `event`. */
void context_switched(cctx_thread_state *ts, cctx_event event, cctx_context *ctx) CCTX_HIDDEN;

#endif
