# Images of the continuous-training loop; one file, three targets:
#   step     (default, last) the step image; entrypoint `python -m pipelines`. The docker and kubernetes runtimes run
#            `python -m pipelines <step> --run-id R --input k=v ...` in it and read its JSON summary back.
#   airflow  Airflow 3 with the product's dags/ and plugins/ (api-server, scheduler, dag-processor, triggerer).
#   mlflow   the MLflow tracking server with basic auth and the Postgres and S3 clients it needs.
#
#   docker build -t mlops-step:latest .                                   # CPU torch (default)
#   docker build -t mlops-step:cuda --build-arg VARIANT=cuda .            # CUDA torch (PyPI wheels bundle CUDA)
#   docker build -t mlops-airflow:latest --target airflow .
#   docker build -t mlops-mlflow:latest --target mlflow .
#
# Build args:
#   BASE_IMAGE     a Debian image with Python 3.11 on PATH as python3 (default python:3.11-slim-bookworm; the
#                  container tests use a debootstrapped bookworm, see scripts/container_env.sh)
#   VARIANT        cpu | cuda: which torch build goes into the step and airflow images
#   PIP_NO_INDEX, PIP_FIND_LINKS   install from a wheelhouse mounted into the build instead of an index
# Layers go from rarely to often changed: OS user and venv, pinned dependencies (requirements.txt only), then code.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
ARG PIP_VERSION=26.3
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
RUN set -eux; \
    python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version'; \
    python3 -m venv /opt/venv; \
    pip install --upgrade "pip==${PIP_VERSION}"; \
    groupadd --gid 10001 mlops; \
    useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin mlops; \
    mkdir -p /app /data; \
    chown mlops:mlops /data

# ---------------------------------------------------------------------------------------------------------------
# The step's dependencies: requirements.txt without Airflow (a step never imports it).
FROM python-base AS step-deps
ARG VARIANT=cpu
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
WORKDIR /app
COPY requirements.txt ./
RUN set -eux; \
    torch_pin="$(grep -E '^torch==' requirements.txt)"; \
    case "${VARIANT}" in \
      cpu)  pip install --index-url "${TORCH_CPU_INDEX_URL}" "${torch_pin}" ;; \
      cuda) pip install "${torch_pin}" ;; \
      *)    echo "VARIANT=${VARIANT} must be cpu or cuda" >&2; exit 1 ;; \
    esac; \
    grep -v -E '^apache-airflow' requirements.txt > /tmp/step-requirements.txt; \
    pip install -r /tmp/step-requirements.txt; \
    rm /tmp/step-requirements.txt; \
    python -c 'import torch, transformers, great_expectations, alibi_detect, mlflow, onnxruntime'
# `torch==X` also matches the CPU build X+cpu (e.g. from a wheelhouse): make a CUDA image that got one fail here.
RUN if [ "${VARIANT}" = cuda ]; then \
      python -c 'import sys, torch; sys.exit(None if torch.version.cuda else f"VARIANT=cuda installed the CPU build torch {torch.__version__}")'; \
    fi

# ---------------------------------------------------------------------------------------------------------------
FROM step-deps AS airflow-deps
ARG PSYCOPG2_VERSION=2.9.13
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
RUN set -eux; \
    pip install -r requirements.txt "psycopg2-binary==${PSYCOPG2_VERSION}"; \
    airflow version

# ---------------------------------------------------------------------------------------------------------------
FROM python-base AS mlflow
ARG PSYCOPG2_VERSION=2.9.13
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
WORKDIR /app
COPY requirements.txt ./
# The pins of requirements.txt constrain mlflow and boto3 to the versions the steps use.
RUN set -eux; \
    pip install -c requirements.txt "mlflow[auth]" boto3 "psycopg2-binary==${PSYCOPG2_VERSION}"; \
    mlflow --version
USER 10001:10001
WORKDIR /data
EXPOSE 5000
ENTRYPOINT ["mlflow"]
CMD ["server", "--host", "0.0.0.0", "--port", "5000"]

# ---------------------------------------------------------------------------------------------------------------
FROM airflow-deps AS airflow
ENV AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/airflow/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/airflow/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    PYTHONPATH=/app:/opt/airflow/plugins \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false
COPY pipelines/ /app/pipelines/
COPY config/ /app/config/
COPY dags/ /opt/airflow/dags/
COPY plugins/ /opt/airflow/plugins/
# AIRFLOW_HOME itself is writable (airflow.cfg is written on first start); dags/ and plugins/ stay read-only.
RUN mkdir -p /opt/airflow/logs /opt/airflow/auth && chown mlops:mlops /opt/airflow /opt/airflow/logs /opt/airflow/auth
USER 10001:10001
WORKDIR /opt/airflow
EXPOSE 8080
ENTRYPOINT ["airflow"]
CMD ["version"]

# ---------------------------------------------------------------------------------------------------------------
# Last stage = the default target of a plain `docker build`.
FROM step-deps AS step
ENV PYTHONPATH=/app \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY pipelines/ /app/pipelines/
COPY config/ /app/config/
# Relative defaults in config/default.yaml (artifact root `var`) resolve under /data: mount a volume there, or
# point MLOPS_PATHS__ARTIFACT_ROOT at s3:// (compose, kubernetes).
USER 10001:10001
WORKDIR /data
ENTRYPOINT ["python", "-m", "pipelines"]
CMD ["--help"]
