/*
 * CContextKitShims — what only the Swift facade needs from C.
 *
 * Why a target of its own: the C runtime (CContextCore, contextcore.h) is
 * usable from plain C with no Swift present, so it must not carry calls into
 * the Swift runtime. The few things the Swift layer cannot say in Swift (it
 * may not name runtime entry points, and `@_silgen_name` for them warns that
 * it will become an error) live here as one-line C wrappers, compiled only
 * into Swift programs (the ContextKit target depends on this one). Nothing
 * here is public API.
 */
#ifndef CCONTEXTKITSHIMS_H
#define CCONTEXTKITSHIMS_H

/** The Swift task running on the calling thread (an identity to compare,
 *  never to dereference), or NULL outside any task. */
const void *cctx_swift_current_task(void);

#endif
