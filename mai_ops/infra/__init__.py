"""Shared plumbing: the bucket layout, S3 helpers, the child runner and its sandbox."""
