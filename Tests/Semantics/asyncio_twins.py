"""The asyncio twins of AsyncioSemanticsTests.swift.

Each case runs in its own asyncio.run (a fresh main task in a copy of an
untouched context, as a Swift test runs each case in a fresh Task.detached)
and prints one line, `name: result`. The Swift suite runs this file and
asserts that its own twin of each case prints the same result.
"""
import asyncio
import contextvars

v = contextvars.ContextVar("v", default=0)


async def child_set_is_private():
    v.set(1)

    async def child():
        v.set(2)
        await asyncio.sleep(0)
        return v.get()

    c = await asyncio.create_task(child())
    return f"{c},{v.get()}"


async def siblings_are_isolated():
    async def child(i):
        v.set(i)
        await asyncio.sleep(0)
        return v.get() == i

    results = await asyncio.gather(*(child(i) for i in range(1, 11)))
    return f"{sum(not r for r in results)},{v.get()}"


async def foreign_token_reset_raises():
    t = v.set(5)

    async def child():
        try:
            v.reset(t)
            return "no error"
        except ValueError:
            return "ValueError"

    r = await asyncio.create_task(child())
    return f"{r},{v.get()}"


async def task_sees_context_at_creation():
    v.set(1)
    go = asyncio.Event()

    async def child():
        await go.wait()
        return v.get()

    t = asyncio.create_task(child())
    v.set(2)
    go.set()
    return f"{await t},{v.get()}"


async def run_changes_that_context():
    ctx = contextvars.Context()
    ctx.run(v.set, 7)
    return f"{ctx[v]},{v.get()}"


async def entering_an_entered_context_raises():
    ctx = contextvars.Context()

    def inner():
        try:
            ctx.run(lambda: None)
            return "no error"
        except RuntimeError:
            return "RuntimeError"

    return ctx.run(inner)


async def reset_restores_in_order():
    t1 = v.set(1)
    t2 = v.set(2)
    a = v.get()
    v.reset(t2)
    b = v.get()
    v.reset(t1)
    return f"{a},{b},{v.get()}"


async def sync_helper_called_from_a_task():
    def helper():
        t = v.set(9)
        x = v.get()
        v.reset(t)
        return x

    await asyncio.sleep(0)
    a = helper()
    return f"{a},{v.get()}"


async def group_of_2000_each_sets_its_id():
    async def read():
        return v.get()

    async def child(i):
        v.set(i)
        await asyncio.sleep(0)
        inner = await asyncio.create_task(read())
        return (v.get() != i) + (inner != i)

    results = await asyncio.gather(*(child(i) for i in range(1, 2001)))
    return f"{sum(results)},{v.get()}"


CASES = [
    child_set_is_private,
    siblings_are_isolated,
    foreign_token_reset_raises,
    task_sees_context_at_creation,
    run_changes_that_context,
    entering_an_entered_context_raises,
    reset_restores_in_order,
    sync_helper_called_from_a_task,
    group_of_2000_each_sets_its_id,
]

if __name__ == "__main__":
    for case in CASES:
        print(f"{case.__name__}: {asyncio.run(case())}")
