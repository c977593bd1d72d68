/*
 * local_threads.c — threading.local in C: one local, two threads, two values.
 *
 * Build against an installed ContextKit:
 *     cc local_threads.c $(pkg-config --cflags --libs contextcore)
 */
#include <contextcore.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static cctx_local *greeting;

static void show(const char *who)
{
    void *value = NULL;
    if (cctx_local_get(greeting, &value) == CCTX_OK)
        printf("  %-12s sees greeting = \"%s\"\n", who, (const char *)value);
    else
        printf("  %-12s sees no greeting\n", who);
}

static void *worker(void *arg)
{
    (void)arg;
    show("worker");                 /* a new thread sees none of main's values */
    if (cctx_local_set(greeting, "hello from the worker") != CCTX_OK)
        return NULL;
    show("worker");
    return NULL;                    /* the worker's value is released at exit */
}

int main(void)
{
    puts("threading.local (C): the same local read from two threads");
    /* NULL ops: the local stores the pointers without owning them. */
    if (cctx_local_new(NULL, NULL, NULL, &greeting) != CCTX_OK)
        return EXIT_FAILURE;
    if (cctx_local_set(greeting, "hello from main") != CCTX_OK)
        return EXIT_FAILURE;
    show("main");

    pthread_t t;
    if (pthread_create(&t, NULL, worker, NULL) != 0)
        return EXIT_FAILURE;
    pthread_join(t, NULL);

    show("main");                   /* unchanged by the worker */
    cctx_local_release(greeting);
    cctx_thread_cleanup(); /* main: exit() runs no key destructors */
    return EXIT_SUCCESS;
}
