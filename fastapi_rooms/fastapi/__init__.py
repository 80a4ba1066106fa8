"""The FastAPI integration: the router, its REST endpoints, the ready endpoint, get_manager."""
