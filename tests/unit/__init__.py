"""The server-free tier: no database, no Redis, no subprocess (`make test-unit`)."""
