"""The station software: serial frames from the radio module in, MQTT batches and alerts out."""
