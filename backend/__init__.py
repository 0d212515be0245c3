"""The Bikeguard backend: MQTT ingest, storage, registry, alarms, HTTP API and pages."""
