"""The MQTT ingest: station messages validated, written in batched transactions (COPY), judged by the alarm engine
in the same transaction, and only then acknowledged to the broker."""
