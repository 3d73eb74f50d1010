# A stand-in for python:3.11-slim-bookworm where no image registry is reachable: the same
# Debian 12 and its Python 3.11, from Debian packages, with a virtualenv first on PATH so that
# `python` and `pip` work as in the official image. Production builds use the official image;
# visrec-images builds this one for the tests (BASE_IMAGE comes from mmdebstrap).
ARG BASE_IMAGE=localhost/visrec-standin/debian:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /usr/local/python \
 && /usr/local/python/bin/pip install --no-cache-dir -q --upgrade "pip<26"
ENV PATH=/usr/local/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8
CMD ["python3"]
