# The Flywheel image: one binary for every component (`flywheel operator`, `collector`, `agent`,
# `fetch-model`), on distroless, as the non-root user 65532. The Helm chart and
# deploy/install.yaml run it with a read-only root filesystem.
#
#   docker build -t ghcr.io/flywheel-dev/flywheel:0.1.0 .
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo reads every target the manifest declares, benches included.
COPY benches ./benches
RUN cargo build --release --locked --bin flywheel \
    && install -D -m 0755 target/release/flywheel /out/flywheel \
    && /out/flywheel --version

# glibc, libgcc and CA certificates (fetch-model reaches object stores and Hugging Face over TLS).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/flywheel /usr/local/bin/flywheel
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/flywheel"]
