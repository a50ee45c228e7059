"""The only module that reads the system clock.

``monotonic()`` drives every timer; ``wall()`` is for timestamps shown to people and stored.
"""

from __future__ import annotations

import time

monotonic = time.monotonic
wall = time.time
