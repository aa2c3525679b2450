#!/usr/bin/env bash
# Builds the local image local/forgejo-runner-stand-in:latest for the docker backend's tests
# (crates/autoscaler/tests/e2e_docker.rs) and for trying the backend by hand: a busybox root
# filesystem plus a static build of the runner stand-in (crates/fake-runner), installed as
# /bin/forgejo-runner and /bin/fake-forgejo-runner. Nothing is pulled: no registry is needed.
#
# Usage: tests/support/build-runner-image.sh [IMAGE]
#   IMAGE defaults to local/forgejo-runner-stand-in:latest.
#   DOCKER (default: docker) names the client, e.g. DOCKER=podman.
#   Needs a running engine, /bin/busybox statically linked (Debian: busybox-static) and the
#   Rust toolchain. The static build goes to target/runner-image (its own target directory,
#   because RUSTFLAGS differ from the workspace build's and would otherwise rebuild everything).
set -euo pipefail

image="${1:-local/forgejo-runner-stand-in:latest}"
docker="${DOCKER:-docker}"
repo_root="$(cd "$(dirname "$0")/../.." && pwd)"
target_dir="$repo_root/target/runner-image"
triple="x86_64-unknown-linux-gnu"

if ! file -L /bin/busybox 2>/dev/null | grep -q 'statically linked'; then
    if ! ldd /bin/busybox 2>&1 | grep -q 'not a dynamic executable'; then
        echo "build-runner-image: /bin/busybox is missing or not static; install busybox-static" >&2
        exit 1
    fi
fi

echo "build-runner-image: static build of fake-forgejo-runner" >&2
(cd "$repo_root" && RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release -p fake-forgejo-runner --target "$triple" --target-dir "$target_dir" >&2)
binary="$target_dir/$triple/release/fake-forgejo-runner"

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/tmp" "$root/etc"
chmod 1777 "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
for applet in sh true echo sleep cat ls env id stat printf test grep head tail wc; do
    ln -s busybox "$root/bin/$applet"
done
cp "$binary" "$root/bin/forgejo-runner"
ln -s forgejo-runner "$root/bin/fake-forgejo-runner"
printf 'root:x:0:0:root:/root:/bin/sh\nrunner:x:1000:1000:runner:/home/runner:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\nrunner:x:1000:\n' >"$root/etc/group"

tar -C "$root" -c . | "$docker" import -c 'ENV PATH=/bin' -c 'USER 0:0' - "$image" >/dev/null
echo "build-runner-image: built $image" >&2
echo "$image"
