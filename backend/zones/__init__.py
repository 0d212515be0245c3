"""Zones commanders draw on the map (registry.py), and a stolen bike crossing their borders (crossings.py)."""
