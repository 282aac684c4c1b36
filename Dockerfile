# pgwarden container image.
#
#   docker build --build-arg PGWARDEN_GIT_REV="$(git rev-parse --short=12 HEAD)" -t pgwarden .
#   docker run -v ./pgwarden.toml:/etc/pgwarden/pgwarden.toml:ro -p 6432:6432 -p 9187:9187 pgwarden
#
# The runtime image is distroless (glibc, CA certificates, no shell) and runs as a non-root
# user (65532). The health check asks pgwarden's own admin endpoint (`pgwarden ready`), so
# the config must have `[admin] listen = "0.0.0.0:9187"` (or 127.0.0.1:9187).

FROM rust:1-bookworm AS build
# pg_query's build script needs libclang.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src src
COPY benches benches
ARG PGWARDEN_GIT_REV=unknown
ENV PGWARDEN_GIT_REV=${PGWARDEN_GIT_REV}
RUN cargo build --release --locked --bin pgwarden \
 && strip target/release/pgwarden \
 && mkdir -p /out/audit

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/pgwarden /usr/local/bin/pgwarden
# A writable audit directory for the non-root user (a named volume mounted here inherits it).
COPY --from=build --chown=65532:65532 /out/audit /var/lib/pgwarden/audit
USER 65532:65532
EXPOSE 6432 9187
ENV PGWARDEN_LOG_FORMAT=json \
    PGWARDEN_CONFIG=/etc/pgwarden/pgwarden.toml
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/pgwarden", "ready", "--admin", "http://127.0.0.1:9187"]
ENTRYPOINT ["/usr/local/bin/pgwarden"]
CMD ["serve"]
