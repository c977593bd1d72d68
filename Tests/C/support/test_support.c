/*
 * test_support.c — see test_support.h.
 */
#include "test_support.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------- values */

static long live, retains, releases, ex_calls, ex_wrong_ctx;

static void tv_retain_cb(void *p)
{
    tv_value *v = p;
    __atomic_add_fetch(&v->refcnt, 1, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&retains, 1, __ATOMIC_SEQ_CST);
}

static void tv_release_cb(void *p)
{
    tv_value *v = p;
    __atomic_add_fetch(&releases, 1, __ATOMIC_SEQ_CST);
    int left = __atomic_sub_fetch(&v->refcnt, 1, __ATOMIC_SEQ_CST);
    if (left < 0) {
        fprintf(stderr, "test value %ld released more often than retained\n", v->id);
        abort();
    }
    if (left == 0) {
        if (v->hook != NULL)
            v->hook(v, v->hook_arg);
        __atomic_sub_fetch(&live, 1, __ATOMIC_SEQ_CST);
        free(v);
    }
}

const cctx_value_ops tv_ops = { tv_retain_cb, tv_release_cb };

char tv_ops_ex_ctx;

static void tv_ex_check(void *ctx)
{
    if (ctx == &tv_ops_ex_ctx)
        __atomic_add_fetch(&ex_calls, 1, __ATOMIC_SEQ_CST);
    else
        __atomic_add_fetch(&ex_wrong_ctx, 1, __ATOMIC_SEQ_CST);
}

static void tv_retain_ex_cb(void *ctx, void *p)
{
    tv_ex_check(ctx);
    tv_retain_cb(p);
}

static void tv_release_ex_cb(void *ctx, void *p)
{
    tv_ex_check(ctx);
    tv_release_cb(p);
}

const cctx_value_ops_ex tv_ops_ex = { tv_retain_ex_cb, tv_release_ex_cb, &tv_ops_ex_ctx };

tv_value *tv_new_hooked(long id, tv_hook hook, void *arg)
{
    tv_value *v = malloc(sizeof *v);
    if (v == NULL)
        abort();
    v->refcnt = 1;
    v->id = id;
    v->hook = hook;
    v->hook_arg = arg;
    __atomic_add_fetch(&live, 1, __ATOMIC_SEQ_CST);
    return v;
}

void tv_hook_uses_library(tv_value *value, void *reentry)
{
    (void)value;
    tv_reentry *r = reentry;
    __atomic_add_fetch(&r->runs, 1, __ATOMIC_SEQ_CST);
    void *out = NULL;
    cctx_status st = cctx_var_get(r->probe, &out);
    T_CHECK(st == CCTX_OK || st == CCTX_NOT_FOUND);
    cctx_context *c = NULL;
    T_CHECK(cctx_context_copy_current(&c) == CCTX_OK);
    T_CHECK(cctx_context_set(c, r->probe, NULL, NULL) == CCTX_OK);
    cctx_context_release(c);
}

tv_value *tv_new(long id)
{
    return tv_new_hooked(id, NULL, NULL);
}

void tv_drop(tv_value *v)
{
    if (v != NULL)
        tv_release_cb(v);
    __atomic_sub_fetch(&releases, 1, __ATOMIC_SEQ_CST); /* not a callback */
}

long tv_live(void) { return __atomic_load_n(&live, __ATOMIC_SEQ_CST); }
long tv_retains(void) { return __atomic_load_n(&retains, __ATOMIC_SEQ_CST); }
long tv_releases(void) { return __atomic_load_n(&releases, __ATOMIC_SEQ_CST); }
long tv_ex_calls(void) { return __atomic_load_n(&ex_calls, __ATOMIC_SEQ_CST); }
long tv_ex_wrong_ctx(void) { return __atomic_load_n(&ex_wrong_ctx, __ATOMIC_SEQ_CST); }

/* Leak checks compare cctx__live_allocations(): refuse to run against a
 * library built without allocation accounting, where they would pass
 * without checking anything. */
__attribute__((constructor)) static void require_accounting(void)
{
    if (cctx__live_allocations() < 0) {
        fprintf(stderr, "these tests need a library built with -DCCTX_ALLOC_ACCOUNTING "
                        "(make builds build/test/libcontextcore.a so)\n");
        exit(2);
    }
}

/* ---------------------------------------------------------------- scale */

long scaled(long n)
{
    const char *s = getenv("CCTX_TEST_SCALE");
    long pct = s ? strtol(s, NULL, 10) : 100;
    if (pct <= 0)
        pct = 100;
    long r = n * pct / 100;
    return r < 1 ? 1 : r;
}

uint64_t rng_next(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 2685821657736338717ull;
}

/* ---------------------------------------------------------------- checks */

static long failures;

long thread_failures(void)
{
    return __atomic_load_n(&failures, __ATOMIC_SEQ_CST);
}

void thread_failure_note(const char *file, int line, const char *what)
{
    fprintf(stderr, "%s:%d: check failed: %s\n", file, line, what);
    __atomic_add_fetch(&failures, 1, __ATOMIC_SEQ_CST);
}

/* ---------------------------------------------------------------- gates */

void gate_open(test_gate *g)
{
    pthread_mutex_lock(&g->lock);
    g->open = true;
    pthread_cond_broadcast(&g->cond);
    pthread_mutex_unlock(&g->lock);
}

bool gate_wait(test_gate *g)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += TEST_WAIT_SECONDS;
    pthread_mutex_lock(&g->lock);
    int rc = 0;
    while (!g->open && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&g->cond, &g->lock, &deadline);
    bool open = g->open;
    pthread_mutex_unlock(&g->lock);
    return open;
}

bool gate_is_open(test_gate *g)
{
    pthread_mutex_lock(&g->lock);
    bool open = g->open;
    pthread_mutex_unlock(&g->lock);
    return open;
}

/* ---------------------------------------------------------------- children */

int run_in_child(void (*fn)(void *arg), void *arg, unsigned seconds)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        abort();
    }
    if (pid == 0) {
        /* The bound: a hang becomes SIGALRM, which the parent reports. */
        /* cmocka's own crash handlers would turn a crash into exit(-1);
         * the parent should see the signal. */
        int crashes[] = { SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGALRM };
        for (size_t i = 0; i < sizeof crashes / sizeof crashes[0]; i++)
            signal(crashes[i], SIG_DFL);
        alarm(seconds != 0 ? seconds : TEST_WAIT_SECONDS * 2);
        long before = thread_failures();
        fn(arg);
        fflush(NULL);
        _exit(thread_failures() == before ? 0 : 1);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            perror("waitpid");
            abort();
        }
    }
    return status;
}

int fork_child_report(int (*child)(void *arg), void *arg, unsigned seconds)
{
    int fds[2];
    if (pipe(fds) != 0)
        return -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        abort();
    if (pid == 0) {
        close(fds[0]);
        /* As run_in_child: the parent should see a crash's signal. */
        int crashes[] = { SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGALRM };
        for (size_t i = 0; i < sizeof crashes / sizeof crashes[0]; i++)
            signal(crashes[i], SIG_DFL);
        alarm(seconds != 0 ? seconds : TEST_WAIT_SECONDS * 2);
        unsigned char r = (unsigned char)child(arg);
        fflush(NULL);
        if (write(fds[1], &r, 1) != 1)
            _exit(1);
        /* The report is out: under valgrind, skip the leak check at exit,
         * which would count what the threads that did not survive the fork
         * held only in their registers and stacks — memory the child cannot
         * reach by design. The parent still gets the full leak check. */
        const char *pre = getenv("LD_PRELOAD");
        if (pre != NULL && strstr(pre, "vgpreload") != NULL)
            raise(SIGKILL);
        _exit(r);
    }
    close(fds[1]);
    unsigned char r = 0xff;
    ssize_t got = read(fds[0], &r, 1); /* 0: the child died first */
    close(fds[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR)
            abort();
    }
    if (got == 1)
        return r;
    if (WIFSIGNALED(status))
        fprintf(stderr, "fork child: killed by signal %d (%s)%s before reporting\n", WTERMSIG(status),
                strsignal(WTERMSIG(status)), WTERMSIG(status) == SIGALRM ? ": it hung" : "");
    else
        fprintf(stderr, "fork child: exited with status %d before reporting\n",
                WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    return -1;
}

struct checked_child {
    void (*fn)(void *arg);
    void *arg;
};

/* 0 when no T_CHECK failed in fn, else 1. */
static int checked_child_run(void *p)
{
    struct checked_child *c = p;
    long before = thread_failures();
    c->fn(c->arg);
    return thread_failures() == before ? 0 : 1;
}

bool run_in_fork_child(void (*fn)(void *arg), void *arg)
{
    struct checked_child c = { fn, arg };
    int r = fork_child_report(checked_child_run, &c, 0);
    if (r > 0)
        fprintf(stderr, "fork child: reported failure\n");
    return r == 0;
}

void assert_child_status_ok(int status, const char *what)
{
    if (WIFSIGNALED(status))
        fail_msg("%s: child killed by signal %d (%s)%s", what, WTERMSIG(status),
                 strsignal(WTERMSIG(status)),
                 WTERMSIG(status) == SIGALRM ? ": it hung" : "");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("%s: child exited with status %d", what, WEXITSTATUS(status));
}

/* ---------------------------------------------------------------- threads */

void threads_start(pthread_t *t, int n, void *(*fn)(void *), void *args, size_t stride)
{
    for (int i = 0; i < n; i++) {
        void *arg = args != NULL ? (char *)args + (size_t)i * stride : (void *)(uintptr_t)i;
        int err = pthread_create(&t[i], NULL, fn, arg);
        if (err != 0)
            fail_msg("pthread_create: %s", strerror(err));
    }
}

void threads_join(pthread_t *t, int n)
{
    for (int i = 0; i < n; i++)
        pthread_join(t[i], NULL);
}

/* ------------------------------------------------------------- fixtures */

static long nothing_left_allocations;
static long nothing_left_values;

int nothing_left_setup(void **state)
{
    (void)state;
    assert_int_equal(cctx_thread_cleanup(), CCTX_OK);
    nothing_left_allocations = cctx__live_allocations();
    nothing_left_values = tv_live();
    return 0;
}

long tv_live_at_setup(void) { return nothing_left_values; }

int nothing_left_teardown(void **state)
{
    (void)state;
    assert_int_equal(cctx_thread_cleanup(), CCTX_OK);
    cctx_reclaim();
    assert_int_equal(tv_live(), nothing_left_values);
    assert_int_equal(cctx__live_allocations(), nothing_left_allocations);
    return 0;
}

/* ------------------------------------------------------------- requests */

void requests_run(cctx_context *base, cctx_var *const *vars, int nvars, int n,
                  tv_value *(*make)(long id))
{
    for (int i = 0; i < n; i++) {
        cctx_context *c = NULL;
        T_CHECK(cctx_context_copy(base, &c) == CCTX_OK);
        T_CHECK(cctx_context_enter(c) == CCTX_OK);
        tv_value *a = make(-1), *b = make(-2);
        T_CHECK(cctx_var_set(vars[nvars], a, NULL) == CCTX_OK);
        T_CHECK(cctx_var_set(vars[i % nvars], b, NULL) == CCTX_OK);
        tv_drop(a);
        tv_drop(b);
        void *out = NULL;
        T_CHECK(cctx_var_get(vars[(i + 1) % nvars], &out) == CCTX_OK &&
                ((tv_value *)out)->id == (i + 1) % nvars + 1);
        T_CHECK(cctx_context_exit(c) == CCTX_OK);
        cctx_context_release(c);
    }
}
