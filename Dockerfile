# Two images from this file; docker-compose.yml builds both.
#   target "hub" (the default: the last stage): the hub alone, as in production. It carries no
#     fixtures/ and no demo data (yrdhub_demo is not copied in: `yrdhub demo` there says it is
#     not installed), and runs as an unprivileged user.
#   target "platforms": the four provinces' simulated insurance platforms (`yrdhub simulate`,
#     seeded with the demo's persons), for a compose set without the real platforms.
# The hub's image carries no settlement/simulated/ either: COPY cannot leave a folder out, so the
# stage "hub-source" deletes it from a copy of the source and the hub copies that (a deletion in
# the hub's own stage would leave the files in a layer below).
FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 yrdhub \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --shell /usr/sbin/nologin yrdhub \
 && install -d -o 10001 -g 10001 /app
WORKDIR /src

FROM runtime AS base
COPY pyproject.toml README.md ./
COPY hub hub
COPY mappers mappers
COPY settlement settlement

FROM base AS hub-source
RUN rm -rf settlement/simulated

FROM base AS platforms
COPY yrdhub_demo yrdhub_demo
RUN pip install --no-cache-dir /src
WORKDIR /app
USER 10001:10001
EXPOSE 9101 9102 9103 9104
CMD ["yrdhub", "simulate", "--host", "0.0.0.0", "--base-port", "9101"]

FROM runtime AS hub
COPY --from=hub-source /src /src
RUN pip install --no-cache-dir /src
# The working folder is the user's (the embedded SQLite default would live here); the code is
# the installed package's, not /src.
WORKDIR /app
USER 10001:10001
EXPOSE 8000 2575
CMD ["yrdhub", "serve", "--host", "0.0.0.0", "--port", "8000"]
