"""Data files shipped with the package (read with :mod:`importlib.resources`): the demo vocabularies."""
