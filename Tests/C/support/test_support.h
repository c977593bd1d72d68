/*
 * test_support.h — the toolbox every C test of ContextKit shares:
 *
 *   scale      scaled(n): CCTX_TEST_SCALE percent (default 100) of an
 *              iteration count; sanitizer and valgrind runs lower it.
 *   PRNG       rng_next(&state): xorshift64*, one state per caller.
 *   values     tv_value: a heap value whose retain/release callbacks
 *              (tv_ops, or tv_ops_ex with a counted user pointer) count
 *              references, so a test can say how many values are alive and
 *              notice one released twice; optionally with a hook that runs
 *              when its last reference goes and may use the library.
 *   requests   requests_run: the request pattern (copy a base, enter,
 *              set two variables, read one, exit, release) n times.
 *   threads    threads_start / threads_join: n threads running one
 *              function; T_CHECK for checks on threads other than the
 *              test's own (cmocka's asserts only work on that one).
 *   gates      a condition a test opens to let a blocked callback go on;
 *              every wait on one is bounded (never a sleep).
 *   children   run_in_child: a scenario that may crash or hang runs in a
 *              forked child with an alarm, so one crash fails one test.
 *   fixtures   nothing_left_setup / nothing_left_teardown: a test leaves
 *              no value and no allocation behind.
 */
#ifndef CCTX_TEST_SUPPORT_H
#define CCTX_TEST_SUPPORT_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <pthread.h>
#include <cmocka.h>

#include "contextcore.h"
#include "contextcore_binding.h"
#include "testing.h"

/* ---------------------------------------------------------------- values */

typedef struct tv_value tv_value;

/* Runs once, when the value's last reference is dropped, before it is
 * freed; it may use the library (a Swift deinit does). */
typedef void (*tv_hook)(tv_value *value, void *arg);

/* A heap value with its own reference count; `id` identifies it. */
struct tv_value {
    int refcnt;
    long id;
    tv_hook hook;
    void *hook_arg;
};

/* Value ops that retain/release tv_value objects. */
extern const cctx_value_ops tv_ops;
/* The same through cctx_value_ops_ex; `ctx` is tv_ops_ex_ctx, and every
 * callback checks it and counts into tv_ex_calls(). */
extern const cctx_value_ops_ex tv_ops_ex;
extern char tv_ops_ex_ctx;

/* A new value with one reference owned by the caller. */
tv_value *tv_new(long id);
/* As tv_new, with a hook for its last release. */
tv_value *tv_new_hooked(long id, tv_hook hook, void *arg);
/* A hook that uses the library again from a value's last release: it
 * reads `probe`, copies the current context, sets `probe` in the copy and
 * counts its runs (atomically) in `runs`. Its argument is a tv_reentry. */
typedef struct tv_reentry {
    cctx_var *probe;
    long runs;
} tv_reentry;
void tv_hook_uses_library(tv_value *value, void *reentry);
/* Drop the caller's reference. */
void tv_drop(tv_value *v);
/* tv_value objects alive right now (all threads). */
long tv_live(void);
/* Total retain / release callback calls so far. */
long tv_retains(void);
long tv_releases(void);
/* Callbacks of tv_ops_ex that received the right ctx / a wrong one. */
long tv_ex_calls(void);
long tv_ex_wrong_ctx(void);

/* ------------------------------------------------------------- fixtures */

/* cmocka setup and teardown for tests that must leave nothing behind: the
 * setup drops the thread's state and notes the live values and
 * allocations; the teardown drops the thread's state again, waits a grace
 * period and asserts both counts are back where they were. */
int nothing_left_setup(void **state);
int nothing_left_teardown(void **state);
/* tv_live() when nothing_left_setup last ran. */
long tv_live_at_setup(void);

/* ---------------------------------------------------------------- scale */

/* CCTX_TEST_SCALE percent (default 100) applied to n, at least 1. */
long scaled(long n);

/* A small deterministic PRNG (xorshift64*), one state per caller. */
uint64_t rng_next(uint64_t *state);

/* ---------------------------------------------------------------- checks */

/* Assert a cctx call returned CCTX_OK, printing cctx_strerror otherwise. */
#define assert_ok(expr) do { cctx_status st_ = (expr); \
    if (st_ != CCTX_OK) fail_msg("%s -> %s", #expr, cctx_strerror(st_)); } while (0)

/* Checks on threads other than the test's: print and count; the test
 * asserts thread_failures() == 0 after joining. */
long thread_failures(void);
void thread_failure_note(const char *file, int line, const char *what);
#define T_CHECK(cond) do { if (!(cond)) \
    thread_failure_note(__FILE__, __LINE__, #cond); } while (0)

/* Starts n threads; thread i runs fn((char *)args + i * stride), or, with
 * `args` NULL, fn((void *)(uintptr_t)i). Fails the test if one cannot
 * start. */
void threads_start(pthread_t *t, int n, void *(*fn)(void *), void *args, size_t stride);
/* Joins the n threads threads_start started. */
void threads_join(pthread_t *t, int n);

/* ------------------------------------------------------------- requests */

/* The request pattern, `n` times on the calling thread. `base` binds
 * vars[0..nvars) to values with ids 1..nvars; vars[nvars] is a variable it
 * does not bind. Each round copies the base, enters the copy, sets
 * vars[nvars] and vars[i % nvars] to values `make(-1)` and `make(-2)`,
 * reads vars[(i + 1) % nvars] and checks its id, exits and releases the
 * copy. Checks with T_CHECK (any thread). */
void requests_run(cctx_context *base, cctx_var *const *vars, int nvars, int n,
                  tv_value *(*make)(long id));

/* ---------------------------------------------------------------- gates */

/* A one-shot condition: closed until gate_open; waiters block until then. */
typedef struct test_gate {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool open;
} test_gate;

#define TEST_GATE_INIT { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false }
/* Generous bound for every wait (a loaded 2-core CI machine). */
#define TEST_WAIT_SECONDS 60

void gate_open(test_gate *g);
/* Waits until the gate is open; false if TEST_WAIT_SECONDS pass first. */
bool gate_wait(test_gate *g);
bool gate_is_open(test_gate *g);

/* ---------------------------------------------------------------- children */

/* Runs fn(arg) in a forked child that is killed by SIGALRM after
 * `seconds` (0: TEST_WAIT_SECONDS * 2). The child's exit status is 0 if fn
 * returns and no T_CHECK failed in it. Returns the raw waitpid status. */
int run_in_child(void (*fn)(void *arg), void *arg, unsigned seconds);
/* Asserts that the child exited normally with status 0, naming the signal
 * or status otherwise. */
#define assert_child_ok(fn, arg) assert_child_status_ok(run_in_child((fn), (arg), 0), #fn)
void assert_child_status_ok(int status, const char *what);
/* Runs child(arg) in a forked child, for a scenario that forks while other
 * threads run, and returns the byte the child returned (0: success; a test
 * may use other values as step codes), or -1 when the child died or hung
 * (killed by SIGALRM after `seconds`, 0: TEST_WAIT_SECONDS * 2) before
 * reporting, which it prints. The byte comes back through a pipe so that,
 * under valgrind, the child can then kill itself: valgrind's leak check at
 * its exit would count what the threads that did not survive the fork held
 * (test_fork.c says more). */
int fork_child_report(int (*child)(void *arg), void *arg, unsigned seconds);
/* fork_child_report for a child that checks with T_CHECK: true when fn
 * returned in the child and no T_CHECK failed there. */
bool run_in_fork_child(void (*fn)(void *arg), void *arg);
/* ThreadSanitizer stops the child of a multi-threaded fork as soon as it
 * starts a thread, so fork tests skip the steps that start threads in the
 * child under TSan (and still run the rest). */
#if defined(__SANITIZE_THREAD__)
#define CHILD_STARTS_THREADS 0
#else
#define CHILD_STARTS_THREADS 1
#endif

#endif
