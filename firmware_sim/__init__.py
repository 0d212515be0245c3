"""Simulated hardware: tags, a radio module writing real serial frames to a pty, and a town to drive them."""
