"""Cupix: an HTTP client for its REST API (client.py), with a bound on each request's whole time
(watchdog.py), the download of sub files (download.py) and the `source.cupix` stage (source.py)."""
