"""Notifications outside the page: an outbox written with the event that causes it, channels, and the sender."""
