"""Attacks on the running system (issue 11): each test tries to break one security or privacy rule."""
