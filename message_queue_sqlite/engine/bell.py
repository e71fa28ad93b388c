"""A wake-up signal that cannot be missed between a check and a wait."""

from __future__ import annotations

import threading


class Bell:
    """Rung by local sends and by the backend's change feed; idle workers wait on it.

    Waiters remember the generation they saw before looking for work, so a ring that
    lands between the look and the wait still wakes them.
    """

    def __init__(self) -> None:
        # entered through the lock itself: a with statement on a C lock releases it whatever
        # is raised (Condition.__enter__ is Python, and a Ctrl+C inside it could leak the lock)
        self._cv_mutex = threading.Lock()
        self._cv = threading.Condition(self._cv_mutex)
        self._generation = 0
        self._waiting = 0

    @property
    def generation(self) -> int:
        return self._generation

    def ring(self) -> None:
        with self._cv_mutex:
            self._generation += 1
            if self._waiting:
                self._cv.notify_all()

    def wait(self, seen: int, timeout: float | None) -> bool:
        """Block until rung after generation ``seen`` or ``timeout`` elapses; True if rung."""
        with self._cv_mutex:
            self._waiting += 1
            try:
                return self._cv.wait_for(lambda: self._generation != seen, timeout)
            finally:
                self._waiting -= 1
