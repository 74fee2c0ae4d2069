# alertflow: every flow in one image, run by name.
#
#   docker build -t alertflow .
#   docker run --rm -v alertflow-data:/data -p 3030:3030 alertflow ztf -w 4
#   docker run --rm alertflow check ztf        # configuration check before a night
#   docker run --rm alertflow --help           # flows and their variables
#
# Arguments after the flow name go to `python -m bytewax.run` (-w, -i/-a, ...).
# Results, logs and recovery partitions are written under /data (the working
# directory); mount a volume there. Prometheus metrics: :3030/metrics.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# CPU build of torch first: the default index brings several GB of CUDA wheels.
RUN pip install torch --index-url https://download.pytorch.org/whl/cpu

# The dependencies alone (from pyproject.toml: the base, the vetting extra for every flow, and
# the onnx extra for ORACLE_BACKEND=onnxruntime), so that a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; x = p["optional-dependencies"]; print("\n".join(p["dependencies"] + x["vetting"] + x["onnx"]))' \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY dataflows ./dataflows
COPY operators ./operators
COPY models ./models
COPY data ./data
# `pip install .` with its dependencies already in place; then a smoke test of the CLI (no torch import).
RUN pip install --no-deps . \
    && python -m dataflows --help > /dev/null

RUN useradd --create-home --uid 10001 alertflow \
    && mkdir -p /data \
    && chown alertflow /data
USER alertflow
WORKDIR /data

# /app first on the path: the flows find their bundled weights and samples in /app/data.
# ORACLE_BACKEND=onnxruntime keeps its exports on the /data volume: exported once, not at every start.
ENV PYTHONPATH=/app \
    ORACLE_ONNX_CACHE_DIR=/data/onnx \
    BYTEWAX_DATAFLOW_API_ENABLED=true \
    BYTEWAX_DATAFLOW_API_PORT=3030

# 3030: bytewax API server and /metrics; 2101: bytewax cluster traffic (-i/-a).
EXPOSE 3030 2101

# The flows stop cleanly on Ctrl-C (state up to the last snapshot kept): make `docker stop` send it.
# `python -m dataflows` execs bytewax, so the signal reaches it directly.
STOPSIGNAL SIGINT

ENTRYPOINT ["python", "-m", "dataflows"]
CMD ["ztf"]
