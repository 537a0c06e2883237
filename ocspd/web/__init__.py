"""The HTTP side of ocspd: the OCSP handlers (``handlers``), the fast path and
its head reader (``fast``, ``head``), the runner that serves them
(``runner``, ``connections``), and the admin app (``admin``).

It imports the responder core, protocol, config, logs, metrics and health
types, never the composition root (``ocspd/app.py``), which wires it.
aiohttp's private API is used in ``aiohttp_glue`` only.
"""
