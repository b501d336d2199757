"""Small helpers every layer uses (stdlib only, no numpy, no torch): files written
atomically with one file mode, checksums, the CPUs this process may use.

The bottom of the import graph: ``analysis``, ``generator``, ``server`` and
``experiment`` may import it; it imports none of them.
"""
