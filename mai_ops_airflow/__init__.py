"""Airflow-side pieces of mai-ops that Airflow loads by class path (triggers).

Kept apart from ``mai_ops``, which never imports Airflow at import time.
"""
