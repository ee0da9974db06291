"""Replay, trigger, watch and listen."""
