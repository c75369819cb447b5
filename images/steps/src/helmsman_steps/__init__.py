"""The step code that runs inside Helmsman's pods, one module per pipeline stage.

Every image (pipeline, training, serving) installs this one package; images differ in base
and dependencies, never in copies of this code.
"""

__version__ = "0.1.0"  # the package's version (pyproject.toml reads it from here)
