# The grader worker image (production: Apache Kafka, no tansu workarounds).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY grader ./grader
COPY config ./config
COPY topics ./topics
RUN pip install --no-cache-dir .
USER 1000:1000
ENV GRADER_DATA_DIR=/tmp/grader-data \
    GRADER_WEB_HOST=0.0.0.0
EXPOSE 6066
ENTRYPOINT ["grader"]
CMD ["worker"]
