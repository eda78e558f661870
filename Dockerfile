# Multi-stage build: compile in the Rust image, run from a small Debian image as a
# non-root user. SQLite is bundled (compiled in); no protoc is needed (protox).
# `.ci/dockerfile-build` runs the build stage on exactly the files it copies (CI has no
# Docker engine): keep the COPY lines simple (context paths, no --from in this stage).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs buf.yaml ./
COPY proto ./proto
COPY migrations ./migrations
COPY src ./src
# The workspace lists client/ (the reference E2EE client) as a member: cargo loads its
# manifest and targets even to build the server alone. Its tests are not needed.
COPY client/Cargo.toml client/build.rs ./client/
COPY client/proto ./client/proto
COPY client/src ./client/src
RUN cargo build --release --locked --bin secretd \
 && strip target/release/secretd

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/secretd secretd \
 && mkdir -p /var/lib/secretd \
 && chown secretd:secretd /var/lib/secretd \
 && chmod 0700 /var/lib/secretd
COPY --from=build /src/target/release/secretd /usr/local/bin/secretd
USER secretd
WORKDIR /var/lib/secretd
ENV SECRETD_LISTEN=0.0.0.0:50051 \
    SECRETD_DATA_DIR=/var/lib/secretd
EXPOSE 50051 9100
VOLUME ["/var/lib/secretd"]
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["secretd", "health", "--addr", "127.0.0.1:50051"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["secretd"]
CMD ["serve"]
