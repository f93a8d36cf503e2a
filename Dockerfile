# Pylon's two images, from one multi-stage build (this machine cannot run a Docker engine; the
# Makefile's `images` target builds them where one runs):
#   docker build --target sidecar  -t ghcr.io/pylon/pylon-sidecar:latest .
#   docker build --target operator -t ghcr.io/pylon/pylon-operator:latest .

# Build: the Swift toolchain plus the C libraries' headers.
FROM swift:6.3-bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends librdkafka-dev libcurl4-openssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so a source change does not fetch them again.
COPY Package.swift ./
RUN swift package resolve
COPY Sources ./Sources
RUN swift build -c release --static-swift-stdlib --product pylon-sidecar \
 && swift build -c release --static-swift-stdlib --product pylon-operator \
 && mkdir /out && cp .build/release/pylon-sidecar .build/release/pylon-operator /out/

# Runtime: the shared C libraries the binaries link (librdkafka, libcurl) and CA certificates;
# the Swift runtime is linked in statically. Non-root, nothing writable needed.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends librdkafka1 libcurl4 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
USER 65532:65532

FROM runtime AS sidecar
COPY --from=build /out/pylon-sidecar /usr/local/bin/pylon-sidecar
EXPOSE 6380 9480
ENTRYPOINT ["/usr/local/bin/pylon-sidecar"]

FROM runtime AS operator
COPY --from=build /out/pylon-operator /usr/local/bin/pylon-operator
EXPOSE 9490 9443
ENTRYPOINT ["/usr/local/bin/pylon-operator"]
