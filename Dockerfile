# syntax=docker/dockerfile:1
# The VPP engine: a slim Python image that runs `vpp run` as an unprivileged user.
#
#   docker build -t vpp-engine .
#   docker run --rm -p 127.0.0.1:8080:8080 -e VPP_API_TOKENS=... vpp-engine
#
# Everything is installed at build time; the running container needs no network besides its
# peers (brokers, devices, database). deploy/docker-compose.yml runs it with its companions.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: install the project and its dependencies into a virtual environment -------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/vpp
WORKDIR /src
# Only what the distribution is built from; tests, docs and benchmarks stay out of the image.
COPY pyproject.toml README.md ./
COPY vpp ./vpp
COPY adapters ./adapters
COPY dispatch ./dispatch
COPY market ./market
# With the "distributed" extra the same image runs `dask worker` for the dispatch fan-out.
# The dispatch's compiled run programme goes into numba's cache here: the running user
# cannot write beside the installed modules.
RUN /opt/vpp/bin/pip install ".[distributed]" \
    && /opt/vpp/bin/vpp --version \
    && /opt/vpp/bin/python -c "from dispatch.runs import warm_up; warm_up()"

# --- run ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/vpp/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/vpp \
    MPLCONFIGDIR=/tmp/matplotlib
# A fixed numeric id, so that volumes and read-only mounts can be prepared for it on the host.
RUN groupadd --system --gid 10001 vpp \
    && useradd --system --uid 10001 --gid vpp --home-dir /var/lib/vpp --shell /usr/sbin/nologin vpp \
    && install -d -o vpp -g vpp -m 0750 /var/lib/vpp
COPY --from=build /opt/vpp /opt/vpp
# The demo park and the market rule sets; mount your own park over /config.
COPY config /config
WORKDIR /var/lib/vpp
VOLUME ["/var/lib/vpp"]
USER vpp:vpp
EXPOSE 8080
# The API answers /healthz without a token; the image has no curl, Python does the request.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"]
CMD ["vpp", "run", "--config", "/config/park.yaml", "--listen", "0.0.0.0:8080"]
