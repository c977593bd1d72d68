/*
 * The calling thread's spare scope binding: one `TaskBinding` whose scope
 * ended on this thread (outside any task, or in a task running on it) while
 * nothing else referred to it and no other task or walker had read it, kept
 * (one reference, +1) for the thread's next scope, in any task or none,
 * instead of being freed and allocated again (see `TaskBinding.park(_:)`).
 * Thread-local: only its own thread reads or writes the slot, and a parked
 * binding is unreachable from anywhere else.
 *
 * At thread exit a pthread key destructor (registered on the thread's first
 * park) hands the spare to the release function ContextKit gave; the
 * thread's TLS is still valid while glibc runs key destructors; a spare
 * parked by a later destructor of the same exit registers the cleanup
 * again, and goes in the next round. The main
 * thread's spare is reclaimed by the process's exit.
 */
#include "CContextKitShims.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

/* The slot and its "destructor registered" flag live in the thread's
 * cctx_shim_thread_slot_block (place_cache.c), which the header's inline
 * take and put reach without a call. */

static pthread_key_t spare_key;
static pthread_once_t spare_key_once = PTHREAD_ONCE_INIT;
/* Stored by every thread's first put (always the same function), read by
 * the destructor, which runs after a put on its own thread: so it reads that
 * thread's own store or an equal one. Relaxed atomics: several threads may
 * make their first put at once (a plain store and load raced, as
 * ThreadSanitizer reported). */
static void (*spare_release)(void *);

static void spare_thread_exit(void *unused)
{
    (void)unused;
    cctx_shim_thread_slots *slots = &cctx_shim_thread_slot_block;
    void *binding = slots->spare;
    slots->spare = NULL;
    /* Unregistered again (glibc cleared the key before calling us): a
     * scope that runs in a later destructor of this exit (another key's,
     * or the release below running a value's deinit) parks its binding
     * through the registering put, which sets the key again, so glibc
     * runs another round and this destructor releases that one too. */
    slots->spare_armed = false;
    void (*release)(void *) = __atomic_load_n(&spare_release, __ATOMIC_RELAXED);
    if (binding != NULL && release != NULL)
        release(binding);
}

static void spare_key_create(void)
{
    (void)pthread_key_create(&spare_key, spare_thread_exit);
}

void *cctx_shim_spare_binding_put_arming(void *binding, void (*release)(void *))
{
    cctx_shim_thread_slots *slots = &cctx_shim_thread_slot_block;
    if (!slots->spare_armed) {
        __atomic_store_n(&spare_release, release, __ATOMIC_RELAXED); /* always the same function */
        (void)pthread_once(&spare_key_once, spare_key_create);
        /* Any non-NULL value: the destructor runs only for those. */
        if (pthread_setspecific(spare_key, &spare_key) != 0)
            return binding; /* cannot clean up at exit: the caller releases it */
        slots->spare_armed = true;
    }
    void *displaced = slots->spare;
    slots->spare = binding;
    return displaced;
}
