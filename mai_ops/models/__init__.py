"""Participants' models: TFLite checks, conversion, fidelity, metrics, and their children."""
