#!/usr/bin/env bash
# Make the two base images the Dockerfile expects, locally, for machines that
# cannot pull from a container registry (this project's CI machines).
#
#   RUST_IMAGE     (default rust:1.95-slim-bookworm)
#                  Debian bookworm minbase + gcc, libc6-dev, ca-certificates,
#                  and this machine's Rust toolchain (rustup layout like the
#                  official image: RUSTUP_HOME=/usr/local/rustup,
#                  CARGO_HOME=/usr/local/cargo).
#   RUNTIME_IMAGE  (default gcr.io/distroless/cc-debian12:nonroot)
#                  distroless-like: only the files of libc6, libgcc-s1,
#                  libstdc++6, libssl3, ca-certificates, netbase, tzdata,
#                  plus /etc/passwd with nonroot (65532); no shell, no package
#                  manager. USER 65532, WORKDIR /home/nonroot.
#
# The images are tagged with the public names so that the Dockerfile's default
# build args work unchanged. On a machine that can pull, you don't need this.
#
# Idempotent: an image whose tag already exists is left alone (FORCE=1 remakes
# both). The debootstrap root file system is cached as a tarball in
# $BASE_IMAGE_CACHE (default /var/cache/api-gateway-base-images), so later runs
# on the same machine need no download.
set -euo pipefail

RUST_IMAGE=${RUST_IMAGE:-rust:1.95-slim-bookworm}
RUNTIME_IMAGE=${RUNTIME_IMAGE:-gcr.io/distroless/cc-debian12:nonroot}
CACHE_DIR=${BASE_IMAGE_CACHE:-/var/cache/api-gateway-base-images}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
FORCE=${FORCE:-0}

log() { printf '[make-base-images] %s\n' "$*" >&2; }

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

need_rust=1
need_runtime=1
if [[ $FORCE != 1 ]]; then
    have_image "$RUST_IMAGE" && need_rust=0
    have_image "$RUNTIME_IMAGE" && need_runtime=0
fi
if [[ $need_rust == 0 && $need_runtime == 0 ]]; then
    log "both images exist ($RUST_IMAGE, $RUNTIME_IMAGE); nothing to do"
    exit 0
fi

if [[ $(id -u) != 0 ]]; then
    log "must run as root (debootstrap, file ownership in the images)"
    exit 1
fi

# Packages in the root file system: what the official rust:*-slim image has
# for building, plus the runtime libraries the distroless-like image takes.
INCLUDE=gcc,libc6-dev,ca-certificates,libssl3,libstdc++6,netbase,tzdata
key=$(printf '%s|%s|%s' "$SUITE" "$INCLUDE" "$(uname -m)" | sha256sum | cut -c1-12)
ROOTFS_TAR="$CACHE_DIR/$SUITE-minbase-$key.tar"

WORK=$(mktemp -d /tmp/make-base-images.XXXXXX)
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

mkdir -p "$CACHE_DIR"
if [[ ! -s $ROOTFS_TAR ]]; then
    if ! command -v debootstrap >/dev/null 2>&1; then
        log "installing debootstrap"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null
        apt-get install -y -q debootstrap >/dev/null
    fi
    log "debootstrap $SUITE (minbase + $INCLUDE) from $MIRROR; takes a few minutes"
    debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$WORK/rootfs" "$MIRROR" \
        >"$WORK/debootstrap.log" 2>&1 || {
        tail -n 30 "$WORK/debootstrap.log" >&2
        log "debootstrap failed"
        exit 1
    }
    # Slim it like the official images: no apt lists, no caches.
    rm -rf "$WORK/rootfs/var/lib/apt/lists/"* "$WORK/rootfs/var/cache/apt/"*.bin \
        "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/log/"*.log
    tar -C "$WORK/rootfs" --numeric-owner -cf "$ROOTFS_TAR.tmp" .
    mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
    rm -rf "$WORK/rootfs"
    log "cached root file system: $ROOTFS_TAR ($(du -h "$ROOTFS_TAR" | cut -f1))"
else
    log "using cached root file system $ROOTFS_TAR"
fi

mkdir -p "$WORK/rootfs"
tar -C "$WORK/rootfs" --numeric-owner -xf "$ROOTFS_TAR"
R="$WORK/rootfs"

# ---------------------------------------------------------------- rust image
if [[ $need_rust == 1 ]]; then
    CARGO_SRC=${CARGO_HOME:-$HOME/.cargo}
    # The toolchain that `cargo` resolves to here, e.g. 1.95.0 (stable).
    sysroot=$(rustc --print sysroot)
    sysroot=$(readlink -f "$sysroot")
    version=$(rustc --version | awk '{print $2}')
    host=$(rustc -vV | awk '/^host:/ {print $2}')
    tc_name="$version-$host"
    log "rust image: toolchain $tc_name from $sysroot"

    mkdir -p "$R/usr/local/rustup/toolchains" "$R/usr/local/cargo/bin"
    dest="$R/usr/local/rustup/toolchains/$tc_name"
    mkdir -p "$dest"
    # Everything but the HTML docs (~800 MB).
    tar -C "$sysroot" --exclude=./share/doc -cf - . | tar -C "$dest" -xf -
    rm -f "$dest/lib/rustlib/manifest-rust-docs-"*
    if [[ -f $dest/lib/rustlib/components ]]; then
        sed -i '/^rust-docs/d' "$dest/lib/rustlib/components"
    fi
    cp "$CARGO_SRC/bin/rustup" "$R/usr/local/cargo/bin/rustup"
    for p in cargo rustc rustdoc cargo-clippy clippy-driver cargo-fmt rustfmt rust-gdb rust-lldb; do
        ln -sf rustup "$R/usr/local/cargo/bin/$p"
    done
    cat >"$R/usr/local/rustup/settings.toml" <<EOF
version = "12"
default_toolchain = "$tc_name"
profile = "minimal"
auto_self_update = "disable"

[overrides]
EOF
    chmod -R a+rwX "$R/usr/local/rustup" "$R/usr/local/cargo"
    log "importing $RUST_IMAGE"
    tar -C "$R" --numeric-owner -cf - . | docker import \
        --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
        --change 'ENV CARGO_HOME=/usr/local/cargo' \
        --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change "ENV RUST_VERSION=$version" \
        --change 'CMD ["bash"]' \
        --message "local stand-in for $RUST_IMAGE (scripts/make-base-images.sh)" \
        - "$RUST_IMAGE" >/dev/null
    rm -rf "$R/usr/local/rustup" "$R/usr/local/cargo"
    docker run --rm "$RUST_IMAGE" cargo --version >&2
fi

# ------------------------------------------------------------- runtime image
if [[ $need_runtime == 1 ]]; then
    log "runtime image: assembling distroless-like file system"
    out="$WORK/runtime"
    mkdir -p "$out/usr/bin" "$out/usr/sbin" "$out/usr/lib" "$out/usr/lib64"
    ln -s usr/bin "$out/bin"
    ln -s usr/sbin "$out/sbin"
    ln -s usr/lib "$out/lib"
    ln -s usr/lib64 "$out/lib64"

    # Each package's files (not directories), skipping docs, man pages,
    # locales, lintian overrides and gconv modules (iconv only).
    # The path to each file's parent is resolved in the root file system so
    # that /lib/... lands under usr/lib/... (merged /usr, as in bookworm).
    for pkg in libc6 libgcc-s1 libstdc++6 libssl3 ca-certificates netbase tzdata; do
        list=
        for l in "$R/var/lib/dpkg/info/$pkg.list" "$R/var/lib/dpkg/info/$pkg:"*.list; do
            [[ -f $l ]] && { list=$l; break; }
        done
        [[ -n $list ]] || { log "package $pkg not in root file system"; exit 1; }
        while IFS= read -r f; do
            case $f in
                /usr/share/doc/* | /usr/share/man/* | /usr/share/locale/* | /usr/share/lintian/* \
                    | /usr/share/info/* | */gconv/* | /usr/sbin/* | /usr/bin/* | /sbin/* | /bin/* \
                    | /usr/share/ca-certificates/* | /usr/share/zoneinfo/right/* \
                    | /usr/share/zoneinfo/posix/* | /usr/share/debconf/*) continue ;;
            esac
            src="$R$f"
            [[ -L $src || -f $src ]] || continue
            parent=$(readlink -f "$(dirname "$src")")
            rel="${parent#"$R"}"
            mkdir -p "$out$rel"
            cp -a "$src" "$out$rel/"
        done <"$list"
    done
    # ca-certificates' bundle is generated at install time, not in the .list.
    mkdir -p "$out/etc/ssl/certs"
    cp -L "$R/etc/ssl/certs/ca-certificates.crt" "$out/etc/ssl/certs/ca-certificates.crt"
    cp -a "$R/etc/os-release" "$out/etc/os-release" 2>/dev/null || true
    cp -a "$R/usr/lib/os-release" "$out/usr/lib/os-release" 2>/dev/null || true
    ln -sf /usr/share/zoneinfo/Etc/UTC "$out/etc/localtime"

    cat >"$out/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
    cat >"$out/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
EOF
    printf 'passwd: files\ngroup: files\nhosts: files dns\nnetworks: files\n' >"$out/etc/nsswitch.conf"
    mkdir -p "$out/tmp" "$out/root" "$out/home/nonroot" "$out/var" "$out/run"
    chmod 1777 "$out/tmp"
    chmod 700 "$out/root"
    chown 65532:65532 "$out/home/nonroot"
    chmod 700 "$out/home/nonroot"

    log "importing $RUNTIME_IMAGE"
    tar -C "$out" --numeric-owner -cf - . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        --change 'USER 65532:65532' \
        --change 'WORKDIR /home/nonroot' \
        --message "local stand-in for $RUNTIME_IMAGE (scripts/make-base-images.sh)" \
        - "$RUNTIME_IMAGE" >/dev/null
fi

docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -F -e "$RUST_IMAGE" -e "$RUNTIME_IMAGE" >&2 || true
log "done"
