"""belusim: a discrete-event simulator of LLM serving with offloaded KV caches."""

__version__ = "0.1.0"


def compiled_modules() -> list[str]:
    """belusim's modules loaded so far that run as compiled extensions (built at install by
    hatch_build.py; empty for a pure-Python or editable install). Same results either way."""
    import sys
    from importlib.machinery import EXTENSION_SUFFIXES

    return sorted(name for name, mod in list(sys.modules.items())
                  if name.startswith("belusim.") and str(getattr(mod, "__file__", "")).endswith(tuple(EXTENSION_SUFFIXES)))
