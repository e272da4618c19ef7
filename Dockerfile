# The hub's image (docker-compose.yml builds it for the hub and the simulated platforms).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY hub hub
COPY mappers mappers
COPY settlement settlement
COPY fixtures fixtures
RUN pip install --no-cache-dir .
EXPOSE 8000 2575
CMD ["yrdhub", "serve", "--host", "0.0.0.0", "--port", "8000"]
