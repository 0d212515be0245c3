"""Storage: connections, migrations and partition maintenance."""
