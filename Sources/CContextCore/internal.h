/*
 * internal.h — the one include of every .c file in CContextCore.
 *
 * It switches on CCTX_BUILDING_CORE, which every internal header requires,
 * so a program outside the library that includes one of them stops at an
 * #error instead of depending on a layout that may change.
 */
#ifndef CCTX_INTERNAL_H
#define CCTX_INTERNAL_H

#define CCTX_BUILDING_CORE 1

#include "contextcore.h"
#include "contextcore_binding.h"
#include "testing.h"
#include "alloc.h"

#if defined(__GNUC__) || defined(__clang__)
#define CCTX_LIKELY(x) __builtin_expect(!!(x), 1)
#define CCTX_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define CCTX_HIDDEN __attribute__((visibility("hidden")))
#else
#define CCTX_LIKELY(x) (x)
#define CCTX_UNLIKELY(x) (x)
#define CCTX_HIDDEN
#endif

/* Executable invariants. On in the test, sanitizer and fuzz builds
 * (-DCCTX_INTERNAL_CHECKS, set by the Makefile), compiled out in
 * production: a failed check prints where and aborts; an unreachable branch
 * is a check that always fails. Without the flag the condition is not
 * evaluated, so it may be as costly as a tree walk. */
#ifdef CCTX_INTERNAL_CHECKS
#include <stdio.h>
#include <stdlib.h>
#define CCTX_ASSERT(cond) do { if (CCTX_UNLIKELY(!(cond))) { \
        fprintf(stderr, "contextcore: internal check failed: %s (%s:%d)\n", \
                #cond, __FILE__, __LINE__); abort(); } } while (0)
#define CCTX_UNREACHABLE() do { \
        fprintf(stderr, "contextcore: unreachable (%s:%d)\n", __FILE__, __LINE__); \
        abort(); } while (0)
#else
#define CCTX_ASSERT(cond) ((void)0)
#define CCTX_UNREACHABLE() __builtin_unreachable()
#endif

/* A test hook: a function pointer (declared in testing.h, defined by the
 * file that calls it) that a test sets to stop a thread at one point of a
 * race, so that the other side's step can run there. Only in builds with
 * internal checks; production builds have no pointer and no load. The
 * acquire load pairs with the test's store of the pointer: whatever the
 * test set up before installing the hook is visible to the hook. */
#ifdef CCTX_INTERNAL_CHECKS
#define CCTX_TEST_HOOK(hook, ...)                                    \
    do {                                                             \
        __typeof__(hook) hook_ = __atomic_load_n(&(hook), __ATOMIC_ACQUIRE); \
        if (hook_ != NULL)                                           \
            hook_(__VA_ARGS__);                                      \
    } while (0)
#else
#define CCTX_TEST_HOOK(hook, ...) ((void)0)
#endif

#endif
