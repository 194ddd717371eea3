"""``serve``'s transport: HTTP/1.1 on the standard library, bounded reads, one route table.

Nothing here knows a task, a model or OpenAI's documents: the application (``serve.py`` and
``endpoints/``) hands the server a Routes table and a function that writes error bodies.
"""
