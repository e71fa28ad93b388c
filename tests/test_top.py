"""``mqs top`` through a pseudo-terminal: it draws the counts, each queue and the running
tasks with their progress, refreshes in place as tasks end (throughput), and quits on q."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import threading

from conftest import subprocess_env, wait_until

from message_queue_sqlite import MessageQueue, current_task


class Screen:
    """What a program printed to the pseudo-terminal it runs in, read as it comes."""

    def __init__(self, fd: int):
        self.fd = fd
        self.text = ""

    def read(self) -> str:
        while select.select([self.fd], [], [], 0)[0]:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # the program ended and closed its side
                break
            if not chunk:
                break
            self.text += chunk.decode(errors="replace")
        return self.text

    def last_frame(self) -> str:
        return self.read().rsplit("\x1b[2J", 1)[-1]


def test_top_draws_the_queue_refreshes_and_quits_on_q(tmp_path):
    folder = str(tmp_path / "q")
    mq = MessageQueue(folder, workers=2)
    release = threading.Event()

    @mq.task(queue="mail")
    def crunch():
        current_task.progress(3, total=4, message="almost")
        release.wait(30)

    @mq.task
    def quick(n):
        return n

    main, sub = pty.openpty()
    top = subprocess.Popen([sys.executable, "-m", "message_queue_sqlite", "top", "--path", folder,
                            "--interval", "0.2"], stdin=sub, stdout=sub, stderr=sub, env=subprocess_env(),
                           close_fds=True)
    os.close(sub)
    screen = Screen(main)
    try:
        with mq.running():
            held = mq.send(crunch)
            wait_until(lambda: "75% (3/4) almost" in screen.last_frame(), timeout=30,
                       what=lambda: f"top to show the running task's progress:\n{screen.last_frame()}")
            shown = screen.last_frame()
            assert held.task_id in shown and "mail" in shown and "running 1" in shown
            for n in range(200):
                mq.send(quick, {"n": n})
            wait_until(lambda: "finished 200" in screen.last_frame(), timeout=30,
                       what=lambda: f"top to count 200 finished:\n{screen.last_frame()}")
            rates = [float(line.split()[1]) for frame_text in screen.read().split("\x1b[2J")
                     for line in frame_text.splitlines()
                     if line.startswith("throughput: ") and "tasks/s" in line]
            assert any(rate > 0 for rate in rates), rates  # the ends between two frames
            release.set()
        os.write(main, b"q")
        assert top.wait(timeout=30) == 0
        frames = screen.read().count("\x1b[2J")
        assert frames >= 2, frames  # redrawn in place: the counts above came from later frames
    finally:
        release.set()
        if top.poll() is None:
            top.kill()
        os.close(main)
        mq.close()


def test_top_once_prints_one_frame_without_a_terminal(tmp_path):
    folder = str(tmp_path / "q")
    with MessageQueue(folder) as mq:
        mq.send("job", {}, queue="reports")
    done = subprocess.run([sys.executable, "-m", "message_queue_sqlite", "top", "--path", folder, "--once"],
                          env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "\x1b[2J" not in done.stdout and "queued 1" in done.stdout
    assert any(line.split()[:2] == ["reports", "1"] for line in done.stdout.splitlines())
