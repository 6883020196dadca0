"""Cupix: an HTTP client for its REST API (client.py), the download of sub files (download.py) and
the `source.cupix` stage (source.py)."""
