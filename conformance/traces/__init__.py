"""Recorded traces: check one against the catalogue (``check``), write one from a run or a replay (``export``),
and import what a developer can record on real hardware (``strace``: a VMM's syscall log)."""
