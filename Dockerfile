# The grader worker image (production: Apache Kafka, no tansu workarounds).
#
# Builder: a wheel of grader with the grading core compiled by mypyc (setup.py; gcc and
# the build requirements live only here), and wheels of its dependencies at the versions
# of constraints.txt. Runtime: those wheels installed, nothing else of the source tree.
# What is verified of this file without a Docker engine: docs/deploy.md.
FROM python:3.11-slim AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py constraints.txt README.md ./
COPY grader ./grader
# GRADER_MYPYC=1: a missing compiler fails the image instead of building it pure.
RUN GRADER_MYPYC=1 pip wheel --no-cache-dir --no-deps -w /wheels . \
 && pip wheel --no-cache-dir -c constraints.txt -w /wheels /wheels/grader-*.whl

FROM python:3.11-slim
COPY --from=builder /wheels /wheels
COPY constraints.txt /tmp/constraints.txt
RUN pip install --no-cache-dir --no-index --find-links /wheels -c /tmp/constraints.txt grader \
 && rm -rf /wheels /tmp/constraints.txt \
 && grader --version | grep -q "core: compiled"
WORKDIR /app
USER 1000:1000
ENV GRADER_DATA_DIR=/tmp/grader-data \
    GRADER_WEB_HOST=0.0.0.0
EXPOSE 6066
ENTRYPOINT ["grader"]
CMD ["worker"]
