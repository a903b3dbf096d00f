"""The data: batches, hold-out and golden set (``datasets``), the demo batches (``demo``, with the vocabularies
shipped as ``demo_texts.json``, read with :mod:`importlib.resources`), and the drift reference (``reference``)."""
