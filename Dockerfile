# chimneyd in a container: the daemon on 0.0.0.0:7411, which needs a token.
#
#   docker build -t chimneyd .
#   docker run --rm -p 7411:7411 -e CHIMNEY_TOKEN=s3cret chimneyd
#   CHIMNEY_TOKEN=s3cret chimneyctl --rpc 127.0.0.1:7411 info
#
# The daemon refuses to listen off loopback without a token, so the entrypoint requires
# CHIMNEY_TOKEN (and takes an optional CHIMNEY_ADMIN_TOKEN), writes them into a configuration
# file readable by the daemon's user only, and starts chimneyd with it. The command is the
# listen address: `docker run … chimneyd --listen 0.0.0.0:7411 --log-level debug` adds options.
# Offloaded connections are loopback sockets, so the peers run in the same container (or share
# its network namespace).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONMALLOC=malloc

WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY chimneyd ./chimneyd
COPY clients ./clients
RUN pip install --no-cache-dir .

WORKDIR /
# nobody:nogroup in the Debian base image
USER 65534:65534
EXPOSE 7411

ENTRYPOINT ["/bin/sh", "-c", "\
set -eu; \
: \"${CHIMNEY_TOKEN:?set CHIMNEY_TOKEN: chimneyd listens on all interfaces here and needs a token}\"; \
umask 077; \
config=\"${TMPDIR:-/tmp}/chimneyd.toml\"; \
python -c 'import json, os; t = lambda k: json.dumps(os.environ.get(k, \"\"), ensure_ascii=False); print(\"[rpc]\\ntoken = \" + t(\"CHIMNEY_TOKEN\") + \"\\nadmin_token = \" + t(\"CHIMNEY_ADMIN_TOKEN\"))' > \"$config\"; \
exec chimneyd --config \"$config\" \"$@\"", "chimneyd"]
CMD ["--listen", "0.0.0.0:7411"]
