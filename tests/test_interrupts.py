"""A Ctrl+C lands in the main thread between any two bytecodes, also inside our send path.
The seed's example app catches it around send_message and then stops its server: the queue
must still work then, whatever the interrupt cut short."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import time

from conftest import subprocess_env

CHILD = textwrap.dedent("""
    import sys
    from message_queue_sqlite import MessageQueue
    mq = MessageQueue(sys.argv[1], workers=2)

    @mq.task
    def echo(n):
        return n

    mq.start()
    print("ready", flush=True)
    interrupts = 0

    def send_until_interrupted(limit):
        global interrupts
        while interrupts < limit:
            try:
                mq.send(echo, {"n": interrupts}, callback=lambda outcome: None)
            except KeyboardInterrupt:
                interrupts += 1
                print("caught", flush=True)  # the next interrupt comes after this line

    while True:  # an interrupt may also land in the loop's own steps, between two sends
        try:
            send_until_interrupted(int(sys.argv[2]))
            break
        except KeyboardInterrupt:
            interrupts += 1
            print("caught", flush=True)
    last = mq.send(echo, {"n": -1})  # after every interrupt: a send, a result, a clean stop
    assert last.result(timeout=30) == -1
    mq.close()
    print("stopped", flush=True)
""")


def _line(child: subprocess.Popen, seconds: float) -> str:
    ready, _, _ = select.select([child.stdout], [], [], seconds)
    return child.stdout.readline().strip() if ready else "(nothing: the child hangs)"


def test_ctrl_c_in_the_middle_of_sends_never_leaves_the_queue_locked(tmp_path):
    """Each interrupt lands at a random point of a send (the child acknowledges each before
    the next): none may leave a lock taken, so the next send and the final stop go on."""
    rng = random.Random(7)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "q"), "300"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, bufsize=1, env=subprocess_env())
    try:
        assert _line(child, 60) == "ready"
        for n in range(300):
            time.sleep(rng.random() * 0.002)  # where in the send it lands, not a wait
            os.kill(child.pid, signal.SIGINT)
            assert _line(child, 30) == "caught", f"interrupt {n}"
        assert _line(child, 60) == "stopped"
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate()
