"""cli: the ``meterlog`` command, assembled from the subcommands each package owns.

The one place that may import every package (it is the composition root); nothing imports
it. Each package keeps its own commands next to its code (``verifier.cli`` for ``verify``);
this package holds only the assembly, key generation and the core demo.
"""
