FROM python:3.11-slim-bookworm
# git for the repository mirrors; openssh-client for ssh:// repositories; zstd for archives;
# bubblewrap, slirp4netns and iproute2 for the build sandbox and its network (docs/security.md).
RUN apt-get update \
 && apt-get install -y --no-install-recommends git git-lfs openssh-client zstd bubblewrap slirp4netns iproute2 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml requirements.lock README.md ./
COPY deployer deployer
COPY projects projects
COPY servers servers
COPY builds builds
RUN pip install --no-cache-dir -c requirements.lock .
COPY . .
RUN useradd --system --home-dir /var/lib/slipway slipway && mkdir -p /var/lib/slipway && chown slipway /var/lib/slipway
USER slipway
EXPOSE 8000
CMD ["python", "manage.py", "serve"]
