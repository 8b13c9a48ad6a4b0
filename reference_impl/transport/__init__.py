"""Talking to a device in another process: the spdm-emu socket protocol (framing, server, client)."""
