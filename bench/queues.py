#!/usr/bin/env python3
"""What named queues cost a worker: draining N tasks spread over K queues, against the same
N in one queue, with the same threads, in one process, alternating runs.

    python3 bench/queues.py [--tasks 20000] [--queues 4] [--threads 4] [--reps 3]
                            [--broker-url postgresql://...]

A worker serving K queues makes one claim statement per queue it visits (each a range of the
ready index); this measures what that rotation costs against one queue. Prints tasks per
second for each layout (median of ``reps``) and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from message_queue_sqlite import MessageQueue  # noqa: E402


def drain(tasks: int, queues: int, threads: int, broker_url: str | None) -> float:
    """Tasks per second from the workers' start to the last completion recorded."""
    with tempfile.TemporaryDirectory() as folder:
        mq = MessageQueue(os.path.join(folder, "q"), workers=threads, broker_url=broker_url)
        done = threading.Event()
        left = [tasks]
        lock = threading.Lock()

        @mq.task
        def noop(i):
            with lock:
                left[0] -= 1
                if not left[0]:
                    done.set()

        names = [f"q{k}" for k in range(queues)]
        for start in range(0, tasks, 1000):
            for k, name in enumerate(names):
                mq.send_many([(noop, {"i": i}) for i in range(start, min(start + 1000, tasks))
                              if i % queues == k], queue=name)
        began = time.perf_counter()
        mq.start(queues=names)
        if not done.wait(600):
            raise SystemExit(f"{queues} queue(s): {left[0]} of {tasks} tasks never ran")
        rate = tasks / (time.perf_counter() - began)
        mq.close()
        if broker_url:  # a fresh schema per run would be cleaner; emptying it is enough here
            MessageQueue(broker_url=broker_url).purge()
        return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--queues", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--broker-url", default=None)
    args = parser.parse_args()
    rates: dict[int, list[float]] = {1: [], args.queues: []}
    for _ in range(args.reps):
        for layout in rates:  # alternating, so drift on the machine hits both alike
            rates[layout].append(drain(args.tasks, layout, args.threads, args.broker_url))
    one, many = (statistics.median(rates[k]) for k in rates)
    print(f"drain {args.tasks} tasks, {args.threads} threads, {args.reps} runs each (median):")
    print(f"  1 queue:            {one:9,.0f} tasks/s   {[round(r) for r in rates[1]]}")
    print(f"  {args.queues} queues, rotated: {many:9,.0f} tasks/s   {[round(r) for r in rates[args.queues]]}")
    print(f"  ratio {args.queues} queues / 1 queue: {many / one:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
