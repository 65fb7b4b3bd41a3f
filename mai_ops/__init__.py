"""mai-ops: the domain library that runs a Mobile AI challenge; `dags/` only wires it."""

from pathlib import Path

# The project folder (include/, dags/): the challenge files and the DAGs live there.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
