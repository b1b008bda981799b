# The tuneloop image: the `tuneloop` command and everything the bots and CPU workers need.
# Build: docker build -t tuneloop .   (docker compose builds it as the `tuneloop` image)
# GPU workers: docker build --build-arg EXTRAS=gpu -t tuneloop-gpu .   (compose's worker-gpu does this)
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Chat front ends by default; a GPU worker's image takes "gpu" (bitsandbytes: QLoRA's 4-bit base model). torch's
# wheel carries its own CUDA runtime, so the base image stays the same.
ARG EXTRAS=slack,telegram

WORKDIR /app
# Dependencies first, from the project metadata and the lock alone, so a code change does not reinstall them; every
# version is the one constraints.txt pins (the versions CI tested).
COPY pyproject.toml README.md constraints.txt ./
RUN mkdir -p bot engine storage \
    && touch bot/__init__.py engine/__init__.py storage/__init__.py \
    && pip install -c constraints.txt ".[${EXTRAS}]" \
    && pip uninstall -y tuneloop \
    && rm -rf bot engine storage build *.egg-info
COPY bot ./bot
COPY engine ./engine
COPY storage ./storage
RUN pip install --no-deps -c constraints.txt ".[${EXTRAS}]" && rm -rf build *.egg-info

# An unprivileged user; the folders exist (owned by it) so fresh named volumes inherit that owner.
RUN useradd --create-home --uid 1000 tuneloop \
    && mkdir -p /var/lib/tuneloop /adapters \
    && chown tuneloop:tuneloop /var/lib/tuneloop /adapters
USER tuneloop
ENV TUNELOOP_HOME=/var/lib/tuneloop
WORKDIR /var/lib/tuneloop

CMD ["tuneloop", "--help"]
