"""cupix-pipeline: align Cupix point clouds and write them to open formats.

Importing this package imports no heavy library (numpy, laspy, open3d, requests).
"""
__version__ = "0.1.0"
