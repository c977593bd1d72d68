/*
 * swift_task.c — which Swift task (if any) is running on this thread, for
 * the Swift facade's hot path.
 *
 * Swift's public `withUnsafeCurrentTask` is generic and is not specialised
 * across module boundaries: asked through it, "am I in a task?" cost more
 * than the rest of ContextVar.get() together. Its implementation is the
 * Concurrency runtime's exported `swift_task_getCurrent`, which takes no
 * argument and returns a +0 task pointer in the ordinary return register —
 * the same under the Swift and C calling conventions, which is why calling
 * it from C is sound (Swift code may not name runtime symbols directly).
 *
 * The reference is weak so that a program without the Swift Concurrency
 * runtime still links; there the answer is "no task".
 */
#include "CContextKitShims.h"

#include <stddef.h>

/* swift_task_getCurrent is declared in the header, for the inline copy
 * (cctx_swift_current_task_inline) the hot paths use. */
const void *cctx_swift_current_task(void)
{
    return cctx_swift_current_task_inline();
}
