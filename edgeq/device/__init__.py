"""Talking to a real or simulated device: the framed serial protocol (see docs/protocol.md)."""
