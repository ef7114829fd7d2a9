"""The batch video job: restyle whole video files frame by frame, safely and resumably.

* `job.process_video` — one input file → one output file; `batch.process_many` — files and/or
  folders, sequentially or on Ray (`ray_runner`), both configured by one `options.JobOptions`.
* `processor` — what the job drives (a frame processor built by a picklable factory where it runs).
* `geometry` — crop/resize rules between input, model and output sizes.
* `segments` — interruption safety and resume (closed segments + manifest, joined at the end).
* `reader`, `writer`, `concat`, `codecs` — PyAV decoding, encoding with audio carried over,
  remuxing parts together, encoder settings. These load no torch.
"""
