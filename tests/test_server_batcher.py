"""The dynamic batcher on its own (``maskrt.runtime.batcher``): the work is a plain function of the
jobs' payloads, so batching, waiting, dropping, failures and draining are checked exactly."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from maskrt.runtime.batcher import Batcher, BatcherClosed, BatchFailed, QueueFull


class Recorder:
    """``process``: records each batch's payloads (and the thread), doubles them; raises for a
    batch holding "boom"; sleeps ``delay`` seconds per batch."""

    def __init__(self, delay: float = 0.0):
        self.batches: list[list] = []
        self.threads: set[str] = set()
        self.delay = delay

    def __call__(self, jobs):
        payloads = [j.payload for j in jobs]
        self.batches.append(payloads)
        self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        if "boom" in payloads:
            raise RuntimeError("backend exploded")
        return [p * 2 for p in payloads]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_batches_up_to_max_batch_in_a_thread():
    async def main():
        rec = Recorder()
        b = Batcher(rec, max_batch=4, max_delay_s=0.05, max_queue=100)
        b.start()
        jobs = b.submit(list(range(10)))
        results = await asyncio.gather(*(j.future for j in jobs))
        await b.stop()
        return rec, results

    rec, results = run(main())
    assert results == [2 * i for i in range(10)]
    assert [len(x) for x in rec.batches] == [4, 4, 2]
    assert rec.threads == {"maskrt-infer_0"}  # never the event loop's thread


def test_lone_request_is_not_held_back():
    """Nothing else on its way: the first image runs at once, not after max_delay."""

    async def main():
        b = Batcher(Recorder(), max_batch=8, max_delay_s=2.0, max_queue=10)
        b.start()
        started = time.perf_counter()
        (job,) = b.submit([1])
        await job.future
        elapsed = time.perf_counter() - started
        await b.stop()
        return elapsed

    assert run(main()) < 0.5


def test_waits_for_announced_images_at_most_max_delay():
    async def main():
        rec = Recorder()
        b = Batcher(rec, max_batch=8, max_delay_s=0.3, max_queue=10)
        b.start()
        with b.expecting():  # a second request is being read
            (first,) = b.submit([1])
            await asyncio.sleep(0.1)
            assert not first.future.done()  # held for the announced one
            (second,) = b.submit([2])
        await asyncio.gather(first.future, second.future)
        # an announced request that never comes holds the batch for max_delay only
        with b.expecting():
            started = time.perf_counter()
            (third,) = b.submit([3])
            await third.future
            waited = time.perf_counter() - started
        await b.stop()
        return rec, waited

    rec, waited = run(main())
    assert rec.batches == [[1, 2], [3]]
    assert 0.25 <= waited < 1.5


def test_queue_full_is_all_or_nothing():
    async def main():
        rec = Recorder()
        b = Batcher(rec, max_batch=2, max_delay_s=0, max_queue=3)  # worker not started
        b.submit([1, 2])
        with pytest.raises(QueueFull) as err:
            b.submit([3, 4])
        assert err.value.retry_after_s >= 1
        assert b.depth == 2
        b.submit([3])
        with pytest.raises(QueueFull):
            b.submit([4])
        b.start()
        await b.stop()
        return rec

    rec = run(main())
    assert sorted(p for batch in rec.batches for p in batch) == [1, 2, 3]


def test_dropped_jobs_never_run_and_free_their_slot():
    async def main():
        rec = Recorder()
        depths = []
        dropped: list[str] = []
        b = Batcher(
            rec,
            max_batch=4,
            max_delay_s=0,
            max_queue=2,
            on_queue_depth=depths.append,
            on_drop=dropped.append,
        )
        a, c = b.submit([1, 2])
        a.drop("client disconnected")
        assert b.depth == 1 and a.future.cancelled()
        (d,) = b.submit([3])  # the slot a held is free again
        b.start()
        results = await asyncio.gather(c.future, d.future)
        await b.stop()
        return rec, results, depths, dropped

    rec, results, depths, dropped = run(main())
    assert rec.batches == [[2, 3]] and results == [4, 6] and dropped == ["client disconnected"]
    assert depths[-1] == 0


def test_failure_fails_only_its_batch_and_the_worker_goes_on():
    async def main():
        rec = Recorder()
        failures: list[None] = []
        b = Batcher(
            rec,
            max_batch=2,
            max_delay_s=0,
            max_queue=10,
            on_batch_failed=lambda: failures.append(None),
        )
        b.start()
        bad = b.submit(["boom", "x"])
        good = b.submit(["y"])
        outcomes = await asyncio.gather(*(j.future for j in bad + good), return_exceptions=True)
        later = b.submit(["z"])
        after = await later[0].future
        await b.stop()
        return outcomes, after, len(failures)

    outcomes, after, failed = run(main())
    assert isinstance(outcomes[0], BatchFailed) and isinstance(outcomes[1], BatchFailed)
    assert "backend exploded" in str(outcomes[0])
    assert outcomes[2] == "yy" and after == "zz" and failed == 1


def test_stop_runs_what_is_queued_then_refuses():
    async def main():
        rec = Recorder(delay=0.05)
        b = Batcher(rec, max_batch=2, max_delay_s=0, max_queue=10)
        b.start()
        jobs = b.submit(list(range(5)))
        await b.stop(timeout_s=10)
        with pytest.raises(BatcherClosed):
            b.submit([9])
        return [j.future.result() for j in jobs]

    assert run(main()) == [0, 2, 4, 6, 8]


def test_stop_does_not_wait_for_announced_images():
    async def main():
        b = Batcher(Recorder(), max_batch=8, max_delay_s=30, max_queue=10)
        b.start()
        with b.expecting():
            (job,) = b.submit([1])
            await asyncio.sleep(0.05)
            started = time.perf_counter()
            await b.stop(timeout_s=10)
            return job.future.result(), time.perf_counter() - started

    result, took = run(main())
    assert result == 2 and took < 5


class Stages:
    """``process`` (stage A) and ``finish`` (stage B) of a pipelined batcher: record which batches
    entered each stage and in which thread; stage A raises for "boomA", stage B for "boomB";
    stage B holds every batch until ``gate`` is set, and stage A of a batch holding ``hold_a``
    until ``gate_a`` is set."""

    def __init__(self, hold_a: object = None):
        self.a: list[list] = []
        self.b: list[list] = []
        self.threads: dict[str, set[str]] = {"a": set(), "b": set()}
        self.a_entered = threading.Semaphore(0)  # released once per batch entering stage A
        self.b_entered = threading.Semaphore(0)
        self.gate = threading.Event()
        self.gate_a = threading.Event()
        self.hold_a = hold_a

    def process(self, jobs):
        payloads = [j.payload for j in jobs]
        self.a.append(payloads)
        self.threads["a"].add(threading.current_thread().name)
        self.a_entered.release()
        if self.hold_a in payloads:
            assert self.gate_a.wait(10)
        if "boomA" in payloads:
            raise RuntimeError("inference exploded")
        return [p * 2 for p in payloads]

    def finish(self, jobs, staged):
        self.b.append([j.payload for j in jobs])
        self.threads["b"].add(threading.current_thread().name)
        self.b_entered.release()
        assert self.gate.wait(10)
        if "boomB" in staged[0]:
            raise RuntimeError("post-processing exploded")
        return [s + "!" for s in staged]


def pipelined(stages: Stages, depth: int = 1, **kwargs) -> Batcher:
    options = {"max_batch": 1, "max_delay_s": 0, "max_queue": 100, **kwargs}
    return Batcher(stages.process, finish=stages.finish, pipeline_depth=depth, **options)


async def entered(sem: threading.Semaphore) -> None:
    """Wait (without blocking the loop) until a stage has been entered once more."""
    assert await asyncio.to_thread(sem.acquire, True, 10)


def test_pipeline_infers_the_next_batch_while_this_one_is_post_processed():
    async def main():
        stages = Stages()
        b = pipelined(stages)
        b.start()
        jobs = b.submit(["x", "y"])
        await entered(stages.b_entered)  # batch x is in stage B, held there ...
        await entered(stages.a_entered)  # batch x's stage A
        await entered(stages.a_entered)  # ... and batch y's stage A starts meanwhile
        overlapped = stages.b == [["x"]] and not jobs[0].future.done()
        busy = b.running_for() > 0  # the stuck-batch check sees a batch in stage B
        stages.gate.set()
        results = await asyncio.gather(*(j.future for j in jobs))
        await b.stop()
        return stages, overlapped, busy, results

    stages, overlapped, busy, results = run(main())
    assert overlapped and busy
    assert results == ["xx!", "yy!"]
    assert stages.threads == {"a": {"maskrt-infer_0"}, "b": {"maskrt-post_0"}}


@pytest.mark.parametrize("depth", [1, 2])
def test_stage_a_waits_when_stage_b_is_behind(depth):
    """``depth`` batches in stage B and one more inferred, waiting for the hand-off; the rest
    stays queued, so the queue fills and submitters get QueueFull."""

    async def main():
        stages = Stages()
        n = depth + 3
        b = pipelined(stages, depth, max_queue=n)
        b.start()
        jobs = b.submit([str(i) for i in range(n)])
        for _ in range(depth + 1):
            await entered(stages.a_entered)
        await asyncio.sleep(0.3)  # room for a wrong worker to start one more batch
        inferred, queued = len(stages.a), b.depth
        with pytest.raises(QueueFull):
            b.submit(["late"] * (depth + 2))
        stages.gate.set()
        results = await asyncio.gather(*(j.future for j in jobs))
        await b.stop()
        return inferred, queued, results

    inferred, queued, results = run(main())
    assert (inferred, queued) == (depth + 1, 2)
    assert results == [f"{i}{i}!" for i in range(depth + 3)]


def test_a_failure_in_either_stage_fails_only_its_batch():
    async def main():
        stages = Stages()
        stages.gate.set()
        failures: list[None] = []
        b = pipelined(stages, on_batch_failed=lambda: failures.append(None))
        b.start()
        jobs = b.submit(["boomA", "x", "boomB", "y"])
        outcomes = await asyncio.gather(*(j.future for j in jobs), return_exceptions=True)
        await b.stop()
        return stages, outcomes, len(failures)

    stages, outcomes, failed = run(main())
    assert isinstance(outcomes[0], BatchFailed) and "inference exploded" in str(outcomes[0])
    assert isinstance(outcomes[2], BatchFailed) and "post-processing exploded" in str(outcomes[2])
    assert outcomes[1] == "xx!" and outcomes[3] == "yy!" and failed == 2
    assert ["boomA"] not in stages.b  # a batch that failed in stage A never reaches stage B


def test_stop_answers_batches_in_stage_b_before_it_returns():
    async def main():
        stages = Stages()
        b = pipelined(stages)
        b.start()
        jobs = b.submit(["x", "y", "z"])
        await entered(stages.b_entered)  # x is in stage B, y inferred or being inferred
        stopping = asyncio.create_task(b.stop(timeout_s=20))
        await asyncio.sleep(0.2)
        waiting = not stopping.done() and not any(j.future.done() for j in jobs)
        with pytest.raises(BatcherClosed):
            b.submit(["late"])
        stages.gate.set()
        await stopping
        return waiting, [j.future.result() for j in jobs], b.running_for()

    waiting, results, running = run(main())
    assert waiting and results == ["xx!", "yy!", "zz!"] and running == 0


def test_a_batch_whose_requests_gave_up_skips_stage_b():
    async def main():
        stages = Stages(hold_a="x")
        stages.gate.set()
        b = pipelined(stages)
        b.start()
        (gone,) = b.submit(["x"])
        await entered(stages.a_entered)
        gone.drop("timeout")  # the request's 504 while its batch is inferred
        stages.gate_a.set()
        (later,) = b.submit(["y"])
        result = await later.future
        await b.stop()
        return stages, gone.future.cancelled(), result

    stages, cancelled, result = run(main())
    assert cancelled and result == "yy!" and stages.b == [["y"]]


def test_depth_0_runs_both_stages_in_the_inference_thread():
    async def main():
        stages = Stages()
        stages.gate.set()
        b = pipelined(stages, 0)
        b.start()
        jobs = b.submit(["x", "y"])
        results = await asyncio.gather(*(j.future for j in jobs))
        await b.stop()
        return stages, results

    stages, results = run(main())
    assert results == ["xx!", "yy!"]
    assert stages.threads == {"a": {"maskrt-infer_0"}, "b": {"maskrt-infer_0"}}
