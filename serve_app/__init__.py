"""The HTTP API (SPEC §3): a thin FastAPI adapter over the registry, served by Ray Serve."""
