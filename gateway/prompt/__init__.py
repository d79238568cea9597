"""Prompt building: chat templates, media placeholders expanded to the encoders' tokens, M-RoPE."""
