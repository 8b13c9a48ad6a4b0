"""Hypothesis state machines that drive a SUT through random interleavings of the lifecycle."""
