"""The compose stack (docker-compose.yml) as operators run it, tested with real calls."""
