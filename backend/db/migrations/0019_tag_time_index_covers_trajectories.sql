-- A tag's trajectory read from the index alone (issue 13). Sightings arrive in time order, so one tag's passages lie
-- one per heap page: a 7-day trajectory of ~440 passages cost ~440 heap page visits after the index range scan.
-- With the station and the end of each passage in the index (INCLUDE), the trajectory, a bike's passages and a
-- chip's last sighting become index-only scans over a few leaf pages (on the days VACUUM has marked all-visible:
-- every day but the current one). On TimescaleDB this serves the chunks not yet compressed; compressed chunks are
-- read by tag through their own segment index.
--
-- The covering index replaces (tag_id, first_seen_at DESC): it serves every query that one did. It is built before
-- the old one is dropped, so readers wait only for the drop; writers wait for the build (CREATE INDEX, as migrations
-- run in a transaction): minutes on a large table, which the stations' spools absorb.

CREATE INDEX sightings_tag_time_covering ON sightings (tag_id, first_seen_at DESC) INCLUDE (station_id, last_seen_at);
DROP INDEX sightings_tag_time;
