"""OpenAI-compatible HTTP serving for unmask models (FastAPI + uvicorn, the ``serve`` extra).

    unmask serve MODEL                  # http://127.0.0.1:8000/v1/completions, /v1/chat/completions, /playground

Modules: ``config`` (ServeConfig limits), ``placeholder`` (the ``<|mask|>`` / ``<|mask:N|>`` prompt syntax),
``text`` (append-only streaming text from a denoising canvas), ``schemas`` (pydantic request models),
``scheduler`` (one worker thread batching compatible requests into shared forwards), ``app`` (the routes),
``playground`` (the self-contained live page). Import ``unmask.serve.app`` only where fastapi is installed.
"""
