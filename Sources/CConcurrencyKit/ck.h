/*
 * The Concurrency Kit headers the C runtime uses (only atomic.h and
 * thread_state.h include them). Nothing in Swift imports this module: it
 * exists so that SwiftPM runs `pkg-config ck` (compiler and linker flags,
 * e.g. the -D__x86_64__ that ck.pc carries) and names libck-dev when it is
 * missing.
 */
#include <ck_epoch.h>
#include <ck_pr.h>
