"""One module per ControlNet preprocessor: each declares its `PreprocessorSpec`
(`pipelines.control_registry`) and registers it when imported; the registry imports every module here
on first use. A module here stays light (no torch, OpenCV or model library at import): its functions
import what they use when they run. Adding a preprocessor: docs/extending.md."""
