/*
 * testing.h — hooks for ContextKit's own tests. Not part of the public API:
 * the symbols are exported (tests link the shared or static library) but
 * carry a double-underscore prefix and may change at any time.
 */
#ifndef CCTX_TESTING_H
#define CCTX_TESTING_H

#include "contextcore.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Make the nth allocation from now fail (1 = the next one); 0 disarms. */
CCTX_API void cctx__fail_allocation(long nth);
/* How many failures the hook has injected so far. */
CCTX_API long cctx__allocation_failures(void);
/* Blocks allocated by the runtime and not yet freed; -1 unless the library
 * was built with CCTX_ALLOC_ACCOUNTING (the test build is). */
CCTX_API long cctx__live_allocations(void);

/* A variable with a chosen 32-bit hash, to force HAMT collisions and deep
 * paths in tests. Otherwise as cctx_var_new. */
CCTX_API cctx_status cctx__var_new_with_hash(const char *name,
                                             const cctx_value_ops *ops,
                                             uint32_t hash, cctx_var **out);
/* The hash a variable was given at creation. */
CCTX_API uint32_t cctx__var_hash(const cctx_var *var);

/* The references to `var` that threads' variable credit lines hold
 * (var.c, "Variable credits"), summed over every line; 0 for a bad
 * handle. A snapshot: exact only while no other thread takes or gives
 * one. Counted in the variable's reference count as well. */
CCTX_API unsigned cctx__var_credits(const cctx_var *var);

/* The per-thread lines of the two credit registries (thread_line.h):
 * shared root credit slots (hamt.c) and variable credit lines (var.c).
 * Returns how many lines the registry holds (made so far; lines are never
 * freed); with `held`, also how many a live thread holds now; with
 * `orphaned`, how many belonged to threads that did not survive a fork
 * and wait for their credits to be taken back (0 outside a fork child).
 * The rest are free. A snapshot: exact only while no other thread starts
 * or exits. */
CCTX_API size_t cctx__root_credit_slots(size_t *held, size_t *orphaned);
CCTX_API size_t cctx__var_credit_lines(size_t *held, size_t *orphaned);

/* Checks every HAMT invariant of the context's current map; returns 0 when
 * they hold, else a line number in hamt.c that names the broken one. */
CCTX_API int cctx__context_check(cctx_context *ctx);

/* How exits order their `owner` store before their look at the handover
 * list (context.c): 0 only asks; 1 makes exits fence for real; 2 uses
 * membarrier when the kernel offers it. Returns the mode in effect (1 or
 * 2). Call only while no other thread uses the library. */
CCTX_API int cctx__context_exit_barrier(int mode);

/* Test builds only (CCTX_INTERNAL_CHECKS): when set, called by a biased
 * enter (context.c, "The bias") inside its window: `where` 1 after it
 * announced itself and before it looks at `owner` again, 2 after that look
 * succeeded and before it stores ENTERED. Lets a test hold a thread there
 * while another revokes. Set it only while no other thread enters. */
CCTX_API extern void (*cctx__bias_window_hook)(int where);

/* Test builds only (CCTX_INTERNAL_CHECKS): when set, called by a copy of
 * a context on a thread that does not write it, after the copy took a
 * batch of shared root credits under its read guard and left the guard,
 * before it puts them into its credit slot (context.c, root_take). Lets a
 * test release the root meanwhile (the install-vs-revoke race of hamt.c,
 * "Shared credits"). Set it only while no other thread copies. */
CCTX_API extern void (*cctx__credit_install_hook)(void);

/* Test builds only (CCTX_INTERNAL_CHECKS): when set, called by a thread
 * installing variable credits (var.c, "Variable credits") after it
 * counted the batch on the variable and before it puts the batch into its
 * line. Lets a test release the variable's last user reference meanwhile
 * (the install-vs-revoke race). Set it only while no other thread takes
 * variable references. */
CCTX_API extern void (*cctx__var_credit_install_hook)(void);

#ifdef __cplusplus
}
#endif
#endif
