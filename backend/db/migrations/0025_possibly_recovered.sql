-- Recovery follow-up (issue 16): a stolen bike whose chip is back at its owner's usual stations for a while raises a
-- 'possibly_recovered' alarm for the police and tells the owner ("Is your bike back?"), so the statistics stay true.
ALTER TABLE alarms DROP CONSTRAINT alarms_kind_check;
ALTER TABLE alarms ADD CONSTRAINT alarms_kind_check CHECK (kind IN ('stolen_chip_seen', 'armed_bike_moving', 'tamper',
    'low_battery', 'chip_cloned', 'station_offline', 'possibly_recovered'));

ALTER TABLE notifications DROP CONSTRAINT notifications_kind_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_kind_check CHECK (kind IN ('armed_bike_moving',
    'stolen_chip_seen', 'alarm_cleared', 'bike_recovered', 'transfer_requested', 'possibly_recovered'));
