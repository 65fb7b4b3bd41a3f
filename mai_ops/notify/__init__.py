"""Emails: every message's text and the ledger that sends each one once."""
