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

#endif
