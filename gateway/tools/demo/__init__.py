"""`make demo`: small checkpoints of real architectures, trained on synthetic data in a few
seconds on the CPU, served by the mesh, which must answer their questions correctly.

One module per concept: `synthetic` (the tasks and their media), `checkpoints` (the untrained
Qwen2-VL and Qwen2-Audio folders), `batches` (training inputs through the mesh's own prompt
building and processors), `training` (the AdamW loop and its progress bar), `models` (the two
demo models, their plans and the cache), `files` (PNG / MP4 / WAV), `stack` (`meshserve up` as
a child) and `run` (the demo itself).
"""
