"""The real-time executor: the shared step loop driven in wall-clock time on real hardware
(backend "cuda") or on host memory with modelled times (backend "emulated")."""
