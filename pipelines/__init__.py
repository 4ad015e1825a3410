"""KFP v2 pipelines: one DAG builder (``builder``), its step wrappers (``ops``), the table of
applications (``apps``) and one CLI (``python -m pipelines``, ``cli``)."""
