"""The wire formats, the only code more than one component imports (DESIGN §2).

- `ids`: station and tag ids, their patterns, checks, format and parse
- `frames`: the radio module's serial frames (streaming decoder with resync) and the tag's status flags
- `beacon_v2`: version 2 tag beacons: ephemeral ids, sealed counters and MACs from a chip key, resolution tables
- `mr7901`: the MR7901 vendor station's TCP frames (streaming decoder with resync, encoder, reply helpers)
- `topics`: MQTT topic names and subscription filters, built and parsed
- `messages`: the MQTT payloads (contract v1), validated at the backend's edge
- `mqtt_address`: a broker's host, port and credentials from its URL
- `heap`: a long-running process's garbage collector settled after start (the vendor bridge's, the backend's)
"""
