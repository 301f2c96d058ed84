# syntax=docker/dockerfile:1
# paysera-token-broker image: `docker build -t paysera-token-broker .`
#
# The install commands of the build stage are the ones .ci/wheel-smoke.sh runs (tests/deploy/
# test_dockerfile.py keeps the two identical): the app is built as a wheel and installed with
# exactly the locked runtime dependencies (hash-checked) into a fresh venv, bytecode compiled.
# The runtime stage only copies that venv; nothing at run time needs a shell or a writable path.

# Exact patch tag; let Renovate/Dependabot add and refresh the digest (@sha256:...) where images
# are built, it cannot be looked up on the machines this repository is developed on.
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm

FROM ${PYTHON_IMAGE} AS build

# Same uv as the Makefile's UV_VERSION, installed the same way.
ARG UV_VERSION=0.13.9
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    VENV=/opt/token-broker \
    BUILD=/build/out
RUN python -m pip install --no-cache-dir "uv==${UV_VERSION}"

WORKDIR /build/src
COPY pyproject.toml uv.lock README.md ./
COPY app ./app

# >>> install (identical in .ci/wheel-smoke.sh)
RUN uv export --quiet --frozen --no-dev --no-editable --no-emit-project --format requirements.txt --output-file "$BUILD/requirements.txt" \
 && uv build --wheel --out-dir "$BUILD/dist" \
 && python -m venv --without-pip "$VENV" \
 && uv pip install --python "$VENV/bin/python" --require-hashes --no-deps --compile-bytecode --requirement "$BUILD/requirements.txt" \
 && uv pip install --python "$VENV/bin/python" --no-deps --compile-bytecode "$BUILD"/dist/*.whl
# <<< install


FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="paysera-token-broker" \
      org.opencontainers.image.description="Shares Paysera Checkout OAuth2 tokens and the upstream rate budget across a fleet" \
      org.opencontainers.image.licenses="MIT"

# The official image ships the standard library without .pyc files; compile them once here so a
# read-only root filesystem does not mean recompiling at every start.
RUN python -m compileall -q -j 0 -x "/(test|tests|idlelib|lib2to3|turtledemo)/" /usr/local/lib/python3.11 \
 && groupadd --system --gid 10001 token-broker \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin token-broker

COPY --from=build /opt/token-broker /opt/token-broker

ENV PATH=/opt/token-broker/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /opt/token-broker
EXPOSE 8080 9090

# uvicorn drains in-flight requests on SIGTERM and the broker releases its locks on shutdown.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/token-broker/bin/token-broker"]
CMD ["serve", "--config", "/etc/token-broker/config.toml"]
