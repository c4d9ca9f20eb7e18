"""Serving policy as plain Python (no SimPy): requests, KV blocks and prefix caching,
the per-instance scheduler, the external KV tier's index and the global router. The
simulator drives these objects with simulated time; a real-hardware replay can drive the
same objects with wall-clock time."""
