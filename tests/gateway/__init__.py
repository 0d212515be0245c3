"""Tests of the station gateway: real ptys, a real broker, a real SQLite spool."""
