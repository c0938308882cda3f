# syntax=docker/dockerfile:1
# The relay's container: dependencies resolved in a build stage, then only the
# virtualenv is copied into a slim runtime that runs as an unprivileged user.
# The final image holds no compiler, no pip, no package index cache. Both stages use
# the same base so the virtualenv's interpreter links stay valid.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Dependencies first, from pyproject alone, so a source edit reuses this layer.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['production']))" > requirements.txt \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -r requirements.txt
COPY infra ./infra
COPY relay ./relay
COPY pairing ./pairing
COPY storage ./storage
COPY client ./client
# The project itself, then the installer: nothing in the runtime can fetch code.
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . \
 && /opt/venv/bin/python -m pip uninstall --yes pip setuptools wheel

FROM python:3.11-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="homepocket-relay" \
      org.opencontainers.image.description="Home Pocket zero-knowledge relay server" \
      org.opencontainers.image.licenses="Apache-2.0"
# The base image's own pip goes too; the data dir only matters on the embedded default.
RUN python -m pip uninstall --yes pip setuptools wheel \
 && groupadd --system --gid 10001 relay \
 && useradd --system --uid 10001 --gid relay --no-create-home --shell /usr/sbin/nologin relay \
 && mkdir -p /var/lib/homepocket \
 && chown relay:relay /var/lib/homepocket
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    DATA_DIR=/var/lib/homepocket
USER 10001:10001
WORKDIR /var/lib/homepocket
EXPOSE 8080
# SIGTERM makes the server close its sockets with 1012 and exit (docs/CONTRACT.md §4).
STOPSIGNAL SIGTERM
# No curl in a slim image: the interpreter that runs the server asks /health itself.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["homepocket-relay"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
