-- Vendor base stations (issue 14): a station the county already owns, speaking a vendor's protocol to the bridge
-- (`bikeguard gateway vendor`), is an ordinary station that also has the protocol it speaks, the device id it sends
-- in every frame (1-16 printable ASCII characters, as protocol.ids.VENDOR_DEVICE_ID_PATTERN), and the IANA time zone
-- its clock runs in (checked against zoneinfo by the backend: PostgreSQL's own zone list may differ from Python's).
-- Our own stations have none of the three.

ALTER TABLE stations
    ADD COLUMN vendor_protocol  text CHECK (vendor_protocol IN ('mr7901')),
    ADD COLUMN vendor_device_id text CHECK (vendor_device_id ~ '^[!-~]{1,16}$'),
    ADD COLUMN time_zone        text CHECK (time_zone ~ '^[!-~]{1,64}$'),
    ADD CONSTRAINT stations_vendor_all_or_none CHECK (
        (vendor_protocol IS NULL) = (vendor_device_id IS NULL) AND (vendor_device_id IS NULL) = (time_zone IS NULL)
    );

-- The bridge finds a frame's station by its device id: one station per device id.
CREATE UNIQUE INDEX stations_vendor_device_id ON stations (vendor_device_id);
