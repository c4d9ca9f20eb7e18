"""belusim: a discrete-event simulator of LLM serving with offloaded KV caches."""

__version__ = "0.1.0"
