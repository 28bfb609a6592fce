# Kiln's binaries in one image: kiln-api, kiln-worker, kiln-janitor, kiln.
# Used by docker-compose.yml; pick the binary with the container's command.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins \
 && mkdir /out \
 && cp target/release/kiln-api target/release/kiln-worker target/release/kiln-janitor target/release/kiln /out/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /var/lib/kiln kiln
COPY --from=build /out/ /usr/local/bin/
COPY config.example.yml /etc/kiln/config.yml
ENV CONFIG_PATH=/etc/kiln/config.yml
EXPOSE 8234
CMD ["kiln-api"]
