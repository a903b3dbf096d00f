"""The model: loading classifiers (``modeling``), the fixed sentence encoder (``encoders``), distillation into a
smaller student (``distill``) and the scoring server that follows the champion (``serve``). The served pyfunc
itself stays at ``pipelines/serving.py``: every registered version pickles that module path and ships that file."""
