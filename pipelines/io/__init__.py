"""Where things are kept: local folders or S3 (``storage``) and MLflow runs (``tracking``)."""
