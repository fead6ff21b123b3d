"""The OpenAI-compatible HTTP server (``chunkcache serve``; DESIGN section 5).

``app.create_app`` builds the FastAPI application; ``server.serve`` runs it. Nothing heavy is imported here,
so the command line can list ``serve``'s options without loading FastAPI or the model.
"""
