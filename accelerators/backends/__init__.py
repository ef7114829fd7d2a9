"""One module per backend: each declares its `BackendSpec` (`accelerators.registry`) and registers it
when imported; the registry imports every module here on first use. A module here stays light (no
torch at import): its checks and its factory import the backend's implementation when they run.
Adding a backend: docs/extending.md."""
