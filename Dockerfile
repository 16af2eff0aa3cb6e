# The grader worker image (production: Apache Kafka, no tansu workarounds).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY grader ./grader
COPY config ./config
COPY topics ./topics
# The grading core compiled with mypyc (grader/nativecore.py, docs/performance.md);
# gcc and mypy are only needed for the build and are removed after it. The build
# runs outside /app so that it compiles the installed package, not the copy of
# the sources in /app; a failed build fails the image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && pip install --no-cache-dir . 'mypy>=1.10' \
 && (cd /tmp && python -m grader.nativebuild && python -m grader.nativebuild --status) \
 && pip uninstall -y mypy \
 && apt-get purge -y gcc libc6-dev && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/*
USER 1000:1000
ENV GRADER_DATA_DIR=/tmp/grader-data \
    GRADER_WEB_HOST=0.0.0.0
EXPOSE 6066
ENTRYPOINT ["grader"]
CMD ["worker"]
