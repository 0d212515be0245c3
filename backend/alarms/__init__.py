"""The alarm engine: the alarm kinds (kinds), the evidence detectors find in committed passages (evidence,
watch_list, detector, detectors/, engine), raising and the life cycle of alarms (store), the read models for the
API and the live feed (queries), and the station watch (station_watch).

Nothing is imported here, so that `backend.alarms.kinds` can be imported on its own without pulling in the rest.
"""
