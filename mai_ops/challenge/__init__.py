"""The challenge: its file schema, dates, timeline, participants and score formulas."""
