-- Commands to stations (issue 11) carry a seq that grows with every command issued, across backend workers:
-- a station acts only on a command whose seq is above the last one it took, so a captured command cannot be
-- replayed. Started at the clock in milliseconds, as hot-list versions are (0006), so a database that was rebuilt
-- or restored never issues seqs below those the stations have already taken.
CREATE SEQUENCE IF NOT EXISTS station_command_seq;
SELECT setval('station_command_seq', greatest((SELECT last_value FROM station_command_seq),
                                              (extract(epoch FROM clock_timestamp()) * 1000)::bigint));
