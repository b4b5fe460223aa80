"""Helpers shared by the demo v2 recipes."""
import time


class Every:
    """Wall-clock timer: `due()` is true once per `seconds` (the first time `seconds` after
    construction)."""

    def __init__(self, seconds):
        self.seconds, self.last = seconds, time.time()

    def due(self):
        if time.time() - self.last > self.seconds:
            self.last = time.time()
            return True
        return False
