"""A userspace TCP proxy on loopback that can cut, slow or stall what crosses it.

Between the queue's processes and a PostgreSQL server (``scripts/faults_network.py`` gives
each "host" one; ``tests/test_network_timeouts.py`` uses one too), it stands in for the
network. Modes:

* ``pass``: bytes are forwarded (after ``latency_s``, and with probability ``loss`` a chunk
  waits ``loss_delay_s`` more: what TCP retransmission after a lost segment looks like to
  the application; a TCP stream never loses bytes, it only stalls);
* ``blackhole``: connections are accepted but nothing is forwarded either way (what has been
  read waits), like a partition that drops every packet while the kernels on both sides
  still acknowledge locally: the client sees no error, only silence. This is the worst case
  for a client (its TCP never times out: the proxy's kernel acknowledges), so only the
  client's own timeouts end its waits. ``heal`` resumes the held streams intact, as after a
  partition shorter than TCP's retransmission limit;
* ``reset()``: every open connection is closed at once (a server restart or a middlebox
  dropping its state); new connections are accepted as the mode says.

One thread accepts; two per connection pump (they wait on the sockets and on the mode's
condition, never on a fixed sleep).
"""

from __future__ import annotations

import random
import select
import socket
import threading
import time

CHUNK = 65536


class Proxy:
    """Listens on 127.0.0.1:``port`` (0: any free port; see ``.port``) and forwards to upstream."""

    def __init__(self, upstream_host: str, upstream_port: int, port: int = 0, seed: int | None = None):
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", port))
        self.port = self._listener.getsockname()[1]
        self._cond = threading.Condition()
        self._mode = "pass"
        self.latency_s = 0.0
        self.loss = 0.0
        self.loss_delay_s = 0.2
        self._rng = random.Random(seed)
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._closed = False
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True)
        self._thread.start()

    # -- control ----------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode

    def blackhole(self) -> None:
        with self._cond:
            self._mode = "blackhole"

    def heal(self) -> None:
        with self._cond:
            self._mode = "pass"
            self._cond.notify_all()

    def degrade(self, latency_s: float = 0.0, loss: float = 0.0, loss_delay_s: float = 0.2) -> None:
        """Latency on every chunk, and on a share ``loss`` of them a retransmission-like stall."""
        with self._cond:
            self.latency_s, self.loss, self.loss_delay_s = latency_s, loss, loss_delay_s

    def reset(self) -> None:
        with self._cond:
            pairs = list(self._pairs)
            self._pairs.clear()
        for pair in pairs:
            for sock in pair:
                _close(sock)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._mode = "closed"
            self._cond.notify_all()
        _close(self._listener)
        self.reset()

    # -- the pumps ----------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
                server.settimeout(None)
            except OSError:
                _close(client)
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._cond:
                if self._closed:
                    _close(client)
                    _close(server)
                    return
                self._pairs.add((client, server))
                self.accepted += 1
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst, (client, server)),
                                 name=f"proxy-{self.port}-pump", daemon=True).start()

    def _hold(self) -> bool:
        """Wait while blackholed; False once the proxy closed."""
        with self._cond:
            while self._mode == "blackhole":
                self._cond.wait()
            return not self._closed

    def _pump(self, src: socket.socket, dst: socket.socket,
              pair: tuple[socket.socket, socket.socket]) -> None:
        try:
            while self._hold():
                try:
                    readable, _, _ = select.select([src], [], [], 1.0)  # wakes to see a close
                except (OSError, ValueError):
                    return
                if not readable:
                    continue
                if not self._hold():  # blackholed meanwhile: nothing is read, nothing passes
                    return
                data = src.recv(CHUNK)
                if not data:
                    return
                lost = self.loss and self._rng.random() < self.loss
                delay = self.latency_s + (self.loss_delay_s if lost else 0.0)
                if delay:
                    with self._cond:
                        self._cond.wait_for(lambda: self._closed, timeout=delay)  # the network's delay
                if not self._hold():  # a chunk read before a blackhole waits for the heal
                    return
                dst.sendall(data)
        except OSError:
            return
        finally:
            with self._cond:
                self._pairs.discard(pair)
            for sock in pair:
                _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def wait_for(condition, timeout: float) -> bool:  # noqa: ANN001 - a tiny helper for scripts
    """Poll ``condition`` until true or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    event = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            return False
        event.wait(0.02)
    return True
