"""fastapi-rooms' benchmarks: ``python -m benchmarks list`` / ``python -m benchmarks run s8``."""
