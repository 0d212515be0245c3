"""ASGI middleware wrapped around the whole app: security headers on every response, request size and time limits."""
