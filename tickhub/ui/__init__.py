"""The dashboard: static files served by the api role at `/`, and their static build (build.py)."""
