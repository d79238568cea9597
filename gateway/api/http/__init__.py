"""The OpenAI-compatible HTTP front of the gateway (FastAPI + uvicorn), over the same
orchestrator as the gRPC API and in the same event loop.

One module per concept: `options` (what `--http-port` and friends configure), `server`
(uvicorn inside the gateway's asyncio loop), `app` (the FastAPI app: errors, auth, routes),
`schemas` (request bodies), `content` (message content parts -> media), `convert` (bodies ->
pipeline requests, chunks -> OpenAI objects), `streaming` (SSE), `errors` (OpenAI error
objects, the HTTP status of each refusal), `auth` (the bearer check), and the routes by API:
`generation` (chat, completions, models), `pooling` (embeddings, score, classify), `audio`
(transcriptions, translations).

Nothing here is imported by `gateway.api` eagerly: a gateway without `--http-port` never loads
FastAPI.
"""
