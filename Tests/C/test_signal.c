/*
 * test_signal.c — cctx_var_get is async-signal-safe: a signal handler (a
 * sampling profiler reading the request id) gets the right value whatever
 * instruction of get, set, reset, enter or exit it interrupted, and leaves
 * the interrupted thread's lookup cache right for the thread's own reads.
 *
 * A worker sets, resets and gets variables in a loop; every variable it
 * touches shares the lookup-cache entry of the one the handler reads (the
 * hashes are chosen), so that the handler lands inside cache writes often.
 * Another thread sends signals until the handler has run a fixed number of
 * times (count-bounded, not time-bounded). The whole test runs in
 * a child process: a crash or hang fails this test only.
 *
 * A second test turns it round: the worker only reads one variable, so
 * nearly every read is a cache hit, and the handler reads another one that
 * shares the entry, so it misses and rewrites the entry. A handler that
 * lands between a hit's checks and its load of the value must not make
 * that read return the handler's variable's value.
 */
#include "test_support.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

enum { NY = 31 };

#define KNOWN ((void *)(intptr_t)0x5eed)

static cctx_var *x;      /* what the handler reads */
static cctx_var *ys[NY]; /* what the worker churns */
static cctx_context *entered;

static long handled, wrong_in_handler, wrong_in_thread;
static int stop, ready;
/* The second test: the worker's one variable and what it holds. */
static cctx_var *hit_var;
#define HIT_VALUE ((void *)(intptr_t)0x417)

static void on_signal(int sig)
{
    (void)sig;
    int saved = errno;
    void *v = NULL;
    if (cctx_var_get(x, &v) != CCTX_OK || v != KNOWN)
        __atomic_add_fetch(&wrong_in_handler, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&handled, 1, __ATOMIC_RELEASE);
    errno = saved;
}

static void check_own(cctx_var *var, void *expect)
{
    void *v = NULL;
    if (cctx_var_get(var, &v) != CCTX_OK || v != expect)
        __atomic_add_fetch(&wrong_in_thread, 1, __ATOMIC_RELAXED);
}

/* check_own through cctx_var_value and through its inlined hit path
 * (cctx_var_value_inline: the Swift binding's read outside a task). */
static void check_own_value(cctx_var *var, void *expect)
{
    if (cctx_var_value(var) != expect)
        __atomic_add_fetch(&wrong_in_thread, 1, __ATOMIC_RELAXED);
    if (cctx_var_value_inline(var, cctx_var_hash(var)) != expect)
        __atomic_add_fetch(&wrong_in_thread, 1, __ATOMIC_RELAXED);
}

static void *worker(void *p)
{
    (void)p;
    if (cctx_var_set(x, KNOWN, NULL) != CCTX_OK)
        abort();
    __atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
    /* The same value in a context the worker enters and leaves, so that
     * the handler also lands inside enter and exit. */
    for (long i = 0; !__atomic_load_n(&stop, __ATOMIC_ACQUIRE); i++) {
        int k = (int)(i % NY);
        void *val = (void *)(intptr_t)(i + 1);
        cctx_token *t = NULL;
        if (cctx_var_set(ys[k], val, &t) != CCTX_OK)
            abort();
        /* Alternating reads of two variables that share a cache entry:
         * each one misses and rewrites the entry, so most of the loop's
         * time is spent inside cache writes, where a handler used to land
         * on a half-written entry. */
        for (int r = 0; r < 8; r++) {
            check_own(x, KNOWN);
            check_own(ys[k], val);
        }
        if (i % 3 == 0) {
            if (cctx_var_reset(ys[k], t) != CCTX_OK)
                abort();
            void *v = NULL;
            if (cctx_var_get_default(ys[k], NULL, &v) != CCTX_OK)
                abort();
            check_own(x, KNOWN);
        }
        cctx_token_release(t);
        if (i % 7 == 0) {
            if (cctx_context_enter(entered) != CCTX_OK)
                abort();
            check_own(x, KNOWN);
            if (cctx_context_exit(entered) != CCTX_OK)
                abort();
            check_own(x, KNOWN);
        }
    }
    cctx_thread_cleanup();
    return NULL;
}

/* Sends SIGUSR1 to `w` until the handler has run `signals` times.
 * Count-bounded: a signal sent while one is pending merges with it, so the
 * count is of handler runs, not of sends; no wait per signal (on a loaded
 * machine each would cost a scheduler round). */
static void signal_until_handled(pthread_t w, long signals)
{
    while (__atomic_load_n(&handled, __ATOMIC_ACQUIRE) < signals) {
        pthread_kill(w, SIGUSR1);
        sched_yield();
    }
}

static int install_handler(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    return sigaction(SIGUSR1, &sa, NULL);
}

static int child_main(void)
{
    alarm(600); /* generous bound: a hang dies of SIGALRM */
    if (install_handler() != 0)
        return 2;
    /* Chosen hashes: every variable maps to lookup-cache entry 0 (the
     * cache indexes by the low bits) and to different HAMT paths. */
    if (cctx__var_new_with_hash("x", NULL, 0x100u, &x) != CCTX_OK)
        return 3;
    for (int k = 0; k < NY; k++)
        if (cctx__var_new_with_hash("y", NULL, 0x100u + 0x40u * (unsigned)(k + 1), &ys[k]) != CCTX_OK)
            return 3;
    if (cctx_context_new(&entered) != CCTX_OK ||
        cctx_context_set(entered, x, KNOWN, NULL) != CCTX_OK)
        return 4;

    pthread_t w;
    if (pthread_create(&w, NULL, worker, NULL) != 0)
        return 5;
    while (!__atomic_load_n(&ready, __ATOMIC_ACQUIRE))
        sched_yield();
    signal_until_handled(w, scaled(60000));
    __atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
    pthread_join(w, NULL);
    printf("signals handled %ld, wrong in handler %ld, wrong in thread %ld\n", handled,
           wrong_in_handler, wrong_in_thread);
    fflush(stdout);
    if (wrong_in_handler != 0 || wrong_in_thread != 0)
        return 1;
    cctx_context_release(entered);
    for (int k = 0; k < NY; k++)
        cctx_var_release(ys[k]);
    cctx_var_release(x);
    cctx_thread_cleanup();
    return 0;
}

/* The worker of the second test: reads hit_var over and over (cache hits,
 * but for the first read after each handler run, which finds the entry
 * holding `x`). */
static void *hit_worker(void *p)
{
    (void)p;
    if (cctx_var_set(x, KNOWN, NULL) != CCTX_OK || cctx_var_set(hit_var, HIT_VALUE, NULL) != CCTX_OK)
        abort();
    __atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
    while (!__atomic_load_n(&stop, __ATOMIC_ACQUIRE))
        for (int r = 0; r < 32; r++) {
            check_own(hit_var, HIT_VALUE);
            check_own_value(hit_var, HIT_VALUE);
        }
    cctx_thread_cleanup();
    return NULL;
}

static int hit_child_main(void)
{
    alarm(600); /* generous bound: a hang dies of SIGALRM */
    if (install_handler() != 0)
        return 2;
    /* Both map to lookup-cache entry 0 (chosen hashes). */
    if (cctx__var_new_with_hash("x", NULL, 0x100u, &x) != CCTX_OK ||
        cctx__var_new_with_hash("hit", NULL, 0x140u, &hit_var) != CCTX_OK)
        return 3;
    pthread_t w;
    if (pthread_create(&w, NULL, hit_worker, NULL) != 0)
        return 5;
    while (!__atomic_load_n(&ready, __ATOMIC_ACQUIRE))
        sched_yield();
    signal_until_handled(w, scaled(60000));
    __atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
    pthread_join(w, NULL);
    printf("signals handled %ld, wrong in handler %ld, wrong in thread %ld\n", handled,
           wrong_in_handler, wrong_in_thread);
    fflush(stdout);
    if (wrong_in_handler != 0 || wrong_in_thread != 0)
        return 1;
    cctx_var_release(hit_var);
    cctx_var_release(x);
    cctx_thread_cleanup();
    return 0;
}

static void run_child(int (*main_fn)(void))
{
    fflush(stdout);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(main_fn());
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status))
        fail_msg("child killed by signal %d", WTERMSIG(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_get_in_signal_handler_is_right_and_harmless(void **state)
{
    (void)state;
    run_child(child_main);
}

static void test_handler_rewriting_the_entry_of_a_cache_hit(void **state)
{
    (void)state;
    run_child(hit_child_main);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_in_signal_handler_is_right_and_harmless),
        cmocka_unit_test(test_handler_rewriting_the_entry_of_a_cache_hit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
