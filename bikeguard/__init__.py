"""Bikeguard: the command line, the demo and the embedded services the default set-up runs."""
