"""The package version, in a module of its own so that every layer can read it.

``mmembed/__init__.py`` re-exports it as ``mmembed.__version__``; modules inside the package
import it from here, which imports nothing (``from mmembed import __version__`` from a low layer
would point up at the package's public face).
"""

__version__ = "0.1.0"
