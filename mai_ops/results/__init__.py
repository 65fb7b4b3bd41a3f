"""Results of the final phase: the ranked table, its validation, and re-scoring.

- :mod:`~mai_ops.results.records`: the frozen manifest and each entry's scored record.
- :mod:`~mai_ops.results.ranking`: scores recomputed with the track's formula, ranks with
  their tie-breaks, the table, and the ranks that moved between two tables.
- :mod:`~mai_ops.results.expectations`: the table checked against the Great Expectations
  suite in ``include/expectations/final_results.json``.

Nothing here imports Airflow; pandas and Great Expectations load inside the functions
that need them.
"""
