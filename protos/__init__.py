"""The shared contract of the mesh: wire protocol, vocabulary, messages, codecs, serving."""
