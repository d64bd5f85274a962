"""``recs serve``: the explorer page and the read-only JSON API over the current published run.

``flows.web.app`` builds the FastAPI app (endpoints, JSON shapes, error mapping); ``flows.web.serve``
binds the port and runs uvicorn; ``static/`` is the page (plain HTML, CSS and JavaScript, no build).
"""
