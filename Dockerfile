# mai-ops production image: the official Airflow image plus the project's locked dependencies,
# DAGs, library and challenge configs. Used by every Airflow service in docker-compose.yaml.
#
#   docker compose build          # or: docker build -t mai-ops:latest .
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11

# Stage 1: turn uv.lock into a plain, fully pinned requirements file.
FROM ${AIRFLOW_IMAGE} AS requirements
RUN pip install --no-cache-dir "uv==0.13.8"
WORKDIR /tmp/mai-ops
COPY pyproject.toml uv.lock ./
RUN python -m uv export --frozen --no-dev --no-hashes --no-emit-project -o /tmp/requirements.txt

# Stage 2: the runtime image.
FROM ${AIRFLOW_IMAGE}
# The sandbox participants' models run in (docs/security.md).
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -m 2775 -o airflow -g 0 /var/lib/mai-ops/device-locks
USER airflow
# uv.lock pins every version (Airflow included), so it plays the role of Airflow's constraints
# file; naming apache-airflow explicitly keeps pip from ever swapping the image's Airflow.
COPY --from=requirements /tmp/requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /tmp/requirements.txt

COPY --chown=airflow:0 mai_ops/ /opt/airflow/mai_ops/
COPY --chown=airflow:0 mai_ops_airflow/ /opt/airflow/mai_ops_airflow/
COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 include/ /opt/airflow/include/
# The project itself, without dependencies (installed above): the `mai-ops` command and
# the `airflow.plugins` entry point that registers the phases' timetable with Airflow.
COPY --chown=airflow:0 pyproject.toml README.md /opt/airflow/
RUN pip install --no-cache-dir --no-deps -e /opt/airflow

# dags/ imports mai_ops; /opt/airflow is AIRFLOW_HOME in the official image.
ENV PYTHONPATH=/opt/airflow \
    MAI_OPS_CHALLENGES_DIR=/opt/airflow/include/challenges
