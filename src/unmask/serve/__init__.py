"""OpenAI-compatible HTTP serving for unmask models (FastAPI + uvicorn, the ``serve`` extra).

    unmask serve MODEL                  # http://127.0.0.1:8000/v1/completions, /v1/chat/completions, /playground

Modules: ``config`` (ServeConfig limits), ``schemas`` (pydantic request models), ``support`` (which OpenAI
fields are honoured, and the 400 for the others), ``errors`` (OpenAI's error shape), ``engine`` (request →
plans → jobs, every limit checked), ``scheduler`` (one worker thread batching compatible requests into shared
forwards), ``text`` (append-only streaming text from a denoising canvas), ``logprobs`` (returned tokens and
their log-probs at commit), ``generation`` (whole and streamed responses), ``metrics`` (Prometheus),
``app`` (the routes), ``playground`` (the self-contained live page). Import ``unmask.serve.app`` (and the
modules it uses) only where fastapi is installed.
"""
