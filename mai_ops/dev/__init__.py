"""The embedded stack for development and the demo: local S3 and SMTP, Airflow, reference models."""
