"""A simulated sales platform: production database, read replica and replica API.

Imports flow one way, down these layers: ``cli``; ``server``; ``api``, ``platform`` and
``generate``; ``faults`` and ``store``; ``model`` and ``profiles``. Nothing here imports
``loaders``.
"""
