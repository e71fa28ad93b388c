"""``mqs top``: the queue's overview, redrawn in place every ``--interval`` seconds, until ``q``
(or Ctrl+C). Everything on it is read from storage (kept counts, the state indexes), so it
shows what every process sees, at any size; throughput is the change in the ended counts
between two frames. On a terminal the keyboard is read in cbreak mode (restored on exit);
waiting for a key is also what paces the frames, so nothing sleeps."""

from __future__ import annotations

import os
import select
import sys
import time
from datetime import datetime
from typing import IO, Any

from message_queue_sqlite.api.queue import MessageQueue
from message_queue_sqlite.core.status import TaskStatus

CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen
RUNNING_SHOWN = 10
ENDED = ("finished", "failed", "cancelled")


Snapshot = tuple[float, int]  # when a frame was drawn, and how many tasks had ended by then


def frame(queue: MessageQueue, where: str, previous: Snapshot | None) -> tuple[str, Snapshot]:
    """One screen of text, and (when, ended so far) for the next frame's throughput."""
    now = time.time()
    stats = queue.stats()
    counts = stats["outcomes"]
    ended = sum(counts[name] for name in ENDED)
    lines = [f"mqs top - {where} - {datetime.fromtimestamp(now).strftime('%H:%M:%S')}   (q quits)", ""]
    lines.append("  ".join(f"{name} {counts[name]}" for name in
                           ("queued", "scheduled", "running", "finished", "failed", "cancelled")))
    if previous is not None and now > previous[0]:
        rate = max(0, ended - previous[1]) / (now - previous[0])
        lines.append(f"throughput: {rate:.1f} tasks/s ended (over the last {now - previous[0]:.1f} s)")
    else:
        lines.append("throughput: (from the next frame)")
    lines += ["", f"{'queue':<20}{'queued':>9}{'scheduled':>11}{'running':>9}"]
    for name, depth in stats["queues"].items():
        lines.append(f"{name:<20}{depth['queued']:>9}{depth['scheduled']:>11}{depth['running']:>9}")
    running = queue.tasks(status=TaskStatus.RUNNING, limit=RUNNING_SHOWN)
    lines += ["", f"running tasks ({counts['running']}; the newest {RUNNING_SHOWN} shown)" if running
              else "running tasks: none"]
    for task in running:
        info = queue.task_info(task.task_id)
        lines.append(f"  {task.task_id:<10} {task.task_name:<24} {task.queue:<12} "
                     f"{_since(task.started_at, now):>8} {_progress(info.progress if info else None)}")
    return "\n".join(lines) + "\n", (now, ended)


def _since(stamp: float | None, now: float) -> str:
    return "-" if stamp is None else f"{max(0.0, now - stamp):.1f} s"


def _progress(progress: Any) -> str:
    if progress is None:
        return ""
    text = f"{progress.fraction * 100:.0f}%" if progress.fraction is not None else f"{progress.done:g} done"
    if progress.total is not None:
        text += f" ({progress.done:g}/{progress.total:g})"
    return text + (f" {progress.message}" if progress.message else "")


def run_top(queue: MessageQueue, where: str, interval: float, once: bool = False,
            keys: IO[str] | None = None, out: IO[str] | None = None) -> int:
    """Draw frames until ``q`` is typed (or Ctrl+C, or end of input); ``once``: one frame, no
    clearing. Returns the exit code."""
    keys = sys.stdin if keys is None else keys
    out = sys.stdout if out is None else out
    if once:
        out.write(frame(queue, where, None)[0])
        return 0
    restore = _cbreak(keys)
    previous = None
    try:
        while True:
            text, previous = frame(queue, where, previous)
            out.write(CLEAR + text)
            out.flush()
            if _quit_typed(keys, interval):
                return 0
    except KeyboardInterrupt:
        return 0
    finally:
        restore()


def _quit_typed(keys: IO[str], interval: float) -> bool:
    """Wait up to ``interval`` for a key; True for ``q`` (or end of input)."""
    ready, _, _ = select.select([keys], [], [], interval)
    if not ready:
        return False
    typed = os.read(keys.fileno(), 64).decode(errors="replace")
    return typed == "" or "q" in typed.lower()


def _cbreak(keys: IO[str]) -> Any:
    """Keys one at a time, unechoed, on a terminal; returns what restores the terminal."""
    if not keys.isatty():
        return lambda: None
    import termios
    import tty

    fd = keys.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    return lambda: termios.tcsetattr(fd, termios.TCSADRAIN, saved)
