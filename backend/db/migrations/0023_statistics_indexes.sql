-- Results (statistics, issue 16): the lookups the statistics make, indexed, so a year's figures read only the
-- reports of the period and, for each, its bike's stolen-chip alarms.

-- Thefts reported in a period (and the same period last year).
CREATE INDEX theft_reports_reported ON theft_reports (reported_at);
-- Did a stolen-chip alarm on the bike come before its recovery: one index probe per recovered bike, however many
-- alarms of other kinds (stations offline, low batteries) a year has gathered.
CREATE INDEX alarms_stolen_chip_bike ON alarms (bike_id, first_seen_at) WHERE kind = 'stolen_chip_seen';
