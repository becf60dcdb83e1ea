# One Dockerfile for the three binaries of the workspace.
#
#   docker build --build-arg SERVICE=gateway     -t api-gateway/gateway .
#   docker build --build-arg SERVICE=service-one -t api-gateway/service-one .
#   docker build --build-arg SERVICE=service-two -t api-gateway/service-two .
#
# The build stages do not depend on SERVICE, so the workspace is compiled once
# and the three images share those layers (in the layer cache of the classic
# builder as well as BuildKit's). Works with the classic builder (no BuildKit
# features are used), which is what docker-compose 1.x and Docker Engine 20.10
# use by default.
#
# Build args:
#   SERVICE        gateway | service-one | service-two        (default gateway)
#   RUST_IMAGE     image with cargo, gcc and libc6-dev    (rust:1.95-slim-bookworm)
#   RUNTIME_IMAGE  glibc runtime, user 65532   (gcr.io/distroless/cc-debian12:nonroot)
#   VENDORED       true: build offline from ./.vendor/crates (made by
#                  `cargo vendor --locked .vendor/crates`); default false,
#                  an ordinary online build from crates.io.

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# ---------------------------------------------------------------------------
# skeleton: the workspace with every .rs file replaced by an empty stub.
# Its output only changes when a manifest, Cargo.lock or the set of source
# files changes, so the dependency layer below stays cached across ordinary
# source edits.
FROM ${RUST_IMAGE} AS skeleton
# Marks the untagged images the classic builder keeps for this stage (the
# layer cache), so that old ones can be pruned by label.
LABEL api-gateway.build-stage=skeleton
WORKDIR /src
COPY . .
RUN set -eu; \
    rm -rf .vendor target; \
    mkdir -p /skeleton; \
    find . -type f \( -name Cargo.toml -o -name Cargo.lock -o -name 'rust-toolchain*' \
        -o -path './.cargo/config*' \) -exec cp --parents {} /skeleton/ \; ; \
    find . -type f -name '*.rs' | while IFS= read -r f; do \
        mkdir -p "/skeleton/$(dirname "$f")"; \
        printf '#![allow(warnings)]\nfn main() {}\n' > "/skeleton/$f"; \
    done

# ---------------------------------------------------------------------------
# build: dependencies first (from the skeleton), then the real sources.
FROM ${RUST_IMAGE} AS build
LABEL api-gateway.build-stage=build
ARG VENDORED=false
WORKDIR /build

# Cargo.lock makes this COPY valid when there is no .vendor directory.
COPY Cargo.lock .vendo[r] /opt/cargo-vendor/
RUN set -eu; \
    if [ "$VENDORED" = true ]; then \
        if [ ! -d /opt/cargo-vendor/crates ]; then \
            echo "VENDORED=true but .vendor/crates is missing; run: cargo vendor --locked .vendor/crates" >&2; \
            exit 1; \
        fi; \
        mkdir -p "${CARGO_HOME:-$HOME/.cargo}"; \
        printf '%s\n' '[source.crates-io]' 'replace-with = "vendored-sources"' \
            '[source.vendored-sources]' 'directory = "/opt/cargo-vendor/crates"' \
            '[net]' 'offline = true' >> "${CARGO_HOME:-$HOME/.cargo}/config.toml"; \
    else \
        rm -rf /opt/cargo-vendor; \
    fi

COPY --from=skeleton /skeleton/ ./
RUN cargo build --locked --release --workspace

COPY --from=skeleton /src/ ./
# The stubs above were compiled after the real files' mtimes: touch them so
# cargo rebuilds the workspace crates (dependencies stay as they are).
RUN set -eu; \
    find . -path ./target -prune -o -type f -name '*.rs' -exec touch {} +; \
    cargo build --locked --release --workspace --bins; \
    mkdir -p /out; \
    for bin in gateway service-one service-two; do \
        cp "target/release/$bin" /out/; \
    done

# ---------------------------------------------------------------------------
# runtime: one binary on a distroless glibc base, no shell, non-root.
FROM ${RUNTIME_IMAGE}
ARG SERVICE=gateway
LABEL org.opencontainers.image.title="${SERVICE}" \
      org.opencontainers.image.description="api-gateway workspace: ${SERVICE}"
COPY --from=build /out/${SERVICE} /usr/local/bin/app
USER 65532:65532
# Each binary's --health-check GETs http://127.0.0.1:$PORT/healthz itself.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/app", "--health-check"]
ENTRYPOINT ["/usr/local/bin/app"]
