"""The browser UI (`livediff ui`): a Gradio app over one shared model with per-tab stream state.

`engine` (the networks + the lock), `sessions` (per-tab pipelines), `settings` (live controls),
`webcam` / `image` / `video` (what each tab does, free of Gradio), `server` (the Gradio layout).
"""
