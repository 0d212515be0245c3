-- Gateways take a hot list only if its version is newer than theirs. Start versions at the clock in
-- milliseconds, so a database that was rebuilt or restored never issues versions below those already
-- out in the field (the sequence still makes them unique and monotonic across backend workers).
SELECT setval(pg_get_serial_sequence('hotlist_versions', 'version'),
              greatest((SELECT last_value FROM hotlist_versions_version_seq),
                       (extract(epoch FROM clock_timestamp()) * 1000)::bigint));
