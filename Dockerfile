# syntax=docker/dockerfile:1
# The clb-operator image: one static binary on distroless/static, running as user 65532 (nonroot).
#
#   docker build -t REGISTRY/clb-operator:0.1.0 .
#
# The builder is Alpine, whose native Rust target is *-unknown-linux-musl: `cargo build` links a static binary
# with no extra target or linker setup. The C compiler (build-base) is for aws-lc-sys, rustls' crypto.

FROM rust:1.95-alpine AS build
RUN apk add --no-cache build-base
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The caches only speed up rebuilds; the binary is copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin clb-operator \
    && cp target/release/clb-operator /clb-operator

# CA certificates (for the CLB API) and /etc/passwd entries for nonroot, nothing else: no shell, no libc.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /clb-operator /clb-operator
USER 65532:65532
ENTRYPOINT ["/clb-operator"]
CMD ["run"]
