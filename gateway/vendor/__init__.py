"""The bridge for vendor base stations (MR7901): their TCP connections in, the same sightings, alarms and health
as our own stations out (docs/installer.md, hardware/mr7901.md)."""
