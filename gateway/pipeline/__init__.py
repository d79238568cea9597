"""The request path: validate, encode, prompt, stream from the LM, detokenize, stop strings."""
