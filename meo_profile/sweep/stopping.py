"""How a sweep stops when asked: the same for every executor.

- The first Ctrl-C (SIGINT) says at once that the sweep stops after the configurations in
  flight, hands out nothing new, and lets those finish and be stored.
- SIGTERM (a scheduler's or `kill`'s polite stop) does the same, but waits at most
  `TERM_GRACE_S` for them, since whoever sent it sends SIGKILL soon after (Slurm waits 30 s
  by default, docker 10 s); past that they are abandoned.
- A second signal stops at once: what is in flight is abandoned (resume measures it again).

`StopNow` unwinds the driver from wherever it is (inside a measurement, or waiting on Ray or
Slurm); it is a BaseException so that a measurement's `except Exception` (which turns failures
into records) does not catch it. It is held back while a record is being appended, so what is
stored stays whole. Either way the driver writes the CSV and the caller prints how to resume;
the exit code is 128 + the first signal's number (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator

TERM_GRACE_S = 10.0
CAUGHT = (signal.SIGINT, signal.SIGTERM)


class StopNow(BaseException):
    """Stop at once: raised in the driver's thread by the second signal or the grace's end."""


class Stopping:
    """Installs the handlers for the `with` block; `requested()` tells the executors."""

    def __init__(self, say: Callable[[str], None] = lambda text: None):
        self.say = say
        self.signum: int | None = None  # the first signal received
        self._now = False  # StopNow raised (or held back while a record is written)
        self._holding = False
        self._held = False
        self._previous: dict[int, object] = {}

    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int | None:
        return None if self.signum is None else 128 + self.signum

    def settle(self) -> None:
        """The sweep is over (or unwinding): later signals change nothing while it cleans up."""
        self._now = True
        signal.setitimer(signal.ITIMER_REAL, 0)

    def _on_signal(self, signum: int, frame) -> None:
        if self._now:  # unwinding or cleaning up already: nothing more to do
            return
        if self.signum is None and signum == signal.SIGALRM:  # not our timer: none is set yet
            return
        if self.signum is None:
            self.signum = signum
            self.say(_FIRST[signum])
            if signum == signal.SIGTERM:
                signal.setitimer(signal.ITIMER_REAL, TERM_GRACE_S)
            return
        if signum != signal.SIGALRM:
            self.say("stopping now: the configurations in flight are abandoned")
        else:
            self.say(f"{TERM_GRACE_S:g} s after SIGTERM: the configurations in flight are abandoned")
        self._stop_now()

    def _stop_now(self) -> None:
        self._now = True
        if self._holding:
            self._held = True
            return
        raise StopNow

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Defer StopNow to the end of the block (a record being appended)."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
        if self._held:
            self._held = False
            raise StopNow

    def __enter__(self) -> Stopping:
        for signum in (*CAUGHT, signal.SIGALRM):
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


_FIRST = {
    signal.SIGINT: "stopping after the configurations in flight (Ctrl-C again to stop at once; "
                   "nothing stored is lost)",
    signal.SIGTERM: f"SIGTERM: stopping after the configurations in flight, within {TERM_GRACE_S:g} s",
}
