"""Acknowledgements first: when a backlog of handler runs should wait for the webhooks still arriving.

Working a backlog costs about as much CPU per run as acknowledging an event does, so on a saturated
core a dispatcher working flat out would nearly halve the acknowledgement rate. Runs are stored
durably and can wait; a sender that gets no answer retries and, in the end, gives up. So while
webhooks arrive and the process uses a whole core, the dispatcher pauses between claims of a
backlog; an idle or moderately busy process has CPU to spare, and the backlog then goes at full speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["AcknowledgementsFirst"]


class AcknowledgementsFirst:
    """Tells the dispatcher when to pause between claims of a backlog.

    >>> pacing = AcknowledgementsFirst()
    >>> pacing.arrived()              # an event was stored
    >>> if backlog and pacing.should_wait():
    ...     await asyncio.sleep(pacing.pause)
    """

    pause = 0.05
    """Seconds a backlog waits between claims while acknowledgements need the CPU."""
    saturated = 0.9
    """CPU use, in cores, from which the process counts as having none to spare."""
    window = 0.05
    """Seconds over which CPU use is measured."""
    arriving = 0.1
    """Seconds after the last stored event during which webhooks count as arriving."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, cpu: Callable[[], float] = time.process_time
    ) -> None:
        self._clock, self._cpu = clock, cpu
        self._sample = (clock(), cpu())
        self._saturated = False
        self._last_arrival = float("-inf")

    def arrived(self) -> None:
        """An event was stored: webhooks are arriving."""
        self._last_arrival = self._clock()

    def should_wait(self) -> bool:
        """True while webhooks arrive and the process has used a whole core over the last window."""
        now, cpu = self._clock(), self._cpu()
        then, cpu_then = self._sample
        if now - then >= self.window:
            self._saturated = (cpu - cpu_then) / (now - then) >= self.saturated
            self._sample = (now, cpu)
        return self._saturated and now - self._last_arrival < self.arriving
