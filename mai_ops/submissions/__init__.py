"""Submissions: intake rules, unpacking, the evaluation unit, validation, final set, scoring."""
