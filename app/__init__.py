"""livediff applications: the CLI, the Gradio UI, the batch video job and frame sources/sinks."""
