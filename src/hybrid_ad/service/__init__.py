"""`hybrid-ad serve`: the fitted detector over HTTP (FastAPI on uvicorn), a live scorer.

Imported only by the `serve` command: fastapi, uvicorn and prometheus-client stay optional.
"""
