"""The verbs of the ``unmask`` command, one module each (``unmask.cli`` holds the table and ``main``).

Every module has ``add_arguments(parser)`` and ``run(args) -> int``. Imports at module level stay light (no
torch, no model code): ``unmask VERB --help`` imports only its verb's module and the config dataclasses.
"""
