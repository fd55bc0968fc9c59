FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY collector collector
COPY policies policies
COPY storage storage
COPY loadgen loadgen
COPY examples examples
RUN pip install --no-cache-dir .
EXPOSE 4317 4318 13133
ENTRYPOINT ["tailsampler"]
CMD ["serve", "--config", "examples/local.yaml"]
