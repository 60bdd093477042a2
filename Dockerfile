# syntax=docker/dockerfile:1
#
# The rendezvous server, from this repository as it stands:
#
#   docker build -t rendezvous .
#   docker run --rm -p 50051:50051 -p 3030:3030 rendezvous
#
# Configured only by flags and RENDEZVOUS_* environment variables (see
# `rendezvous serve --help`). tests/integration/deployment.rs checks every
# variable and flag here against the binary.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Only what the build reads (.dockerignore lists it): no protoc is needed,
# build.rs compiles the proto itself.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin rendezvous \
    && cp target/release/rendezvous /rendezvous

# glibc and libgcc, CA certificates, no shell, and a non-root user
# (65532, "nonroot" in this image; numeric, so that Kubernetes can check
# runAsNonRoot).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /rendezvous /usr/local/bin/rendezvous
USER 65532:65532
# In a container, listen on every interface (the binary's defaults are
# 127.0.0.1, right for a laptop and wrong here).
ENV RENDEZVOUS_GRPC_ADDR=0.0.0.0:50051 \
    RENDEZVOUS_HTTP_ADDR=0.0.0.0:3030
# gRPC (rendezvous.v1.Sync, health, reflection; gRPC-Web), then HTTP (the
# legacy endpoint, /healthz, /readyz, /metrics).
EXPOSE 50051 3030
# For `docker run` and Compose; Kubernetes uses its own gRPC probes instead.
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["/usr/local/bin/rendezvous", "probe", "--server", "http://127.0.0.1:50051", "--timeout", "2s"]
ENTRYPOINT ["/usr/local/bin/rendezvous"]
CMD ["serve"]
