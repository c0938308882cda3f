# syntax=docker/dockerfile:1
# Build a wheel with its dependencies in one stage; run it, non-root, in a slim one.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY infra ./infra
COPY relay ./relay
COPY pairing ./pairing
COPY storage ./storage
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir ".[production]"

FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 relay \
 && useradd --system --uid 10001 --gid relay --home-dir /var/lib/homepocket relay \
 && mkdir -p /var/lib/homepocket && chown relay:relay /var/lib/homepocket
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    DATA_DIR=/var/lib/homepocket
USER relay
WORKDIR /var/lib/homepocket
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["homepocket-relay"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
