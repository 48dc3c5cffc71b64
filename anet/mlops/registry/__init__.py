"""The model registry: versions and the champion (``registry``), the promotion lock (``lock``), reading
versions (``versions``), cleaning up after dead drivers (``doctor``).
"""
