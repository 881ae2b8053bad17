#!/usr/bin/env bash
# Installs everything Bramble's build and tests need, idempotently:
#   - Debian packages for the host (QEMU, clang/llvm for cross C code, g++
#     for libFuzzer (the fuzz targets' libfuzzer-sys builds it), protoc,
#     docker-registry and busybox-static for the container runtime's tests,
#     e2fsprogs, dnsmasq and chrony for network and time tests, and the
#     reference tools the image builder's writers are compared with:
#     bmap-tools, u-boot-tools (mkimage) and dosfstools (fsck.fat), and
#     Debian's etcd for the host (etcd-server's etcd and etcd-client's etcdctl)
#     for host tests of the etcd client code), the arm64 dpkg architecture and
#     Debian's non-free-firmware component (for raspi-firmware);
#   - no host service started by those packages: installs run under a
#     policy-rc.d that refuses service starts, and Debian's etcd service is
#     kept disabled and stopped (a system etcd on 2379/2380 would collide with
#     the etcd the tests start);
#   - the Rust target aarch64-unknown-linux-musl (rustup), with Debian's
#     rustc-web as the fallback when rustup cannot fetch it;
#   - the pinned Debian packages the image is built from (boot/packages.lock)
#     and those the tests build container images from (tests/packages.lock),
#     downloaded into .cache/debs and checked against their sha256.
# A second run downloads nothing.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# The image's packages, and the tests' (container images are built from them).
locks=("$root/boot/packages.lock" "$root/tests/packages.lock")
cache="${BRAMBLE_CACHE:-$root/.cache}/debs"
host_packages=(qemu-system-arm clang llvm lld g++ protobuf-compiler libprotobuf-dev e2fsprogs dnsmasq-base chrony iproute2 ca-certificates xz-utils docker-registry busybox-static bmap-tools u-boot-tools dosfstools etcd-server etcd-client)

say() { printf '==> %s\n' "$*"; }
need_root() {
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null; then sudo "$@"; else echo "deps: '$*' needs root" >&2; exit 1; fi
    else
        "$@"
    fi
}

apt_updated=0
apt_update() {
    if [[ $apt_updated -eq 0 ]]; then
        say "apt-get update"
        need_root apt-get update -qq
        apt_updated=1
    fi
}

# 1. dpkg architecture and the non-free-firmware component.
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    say "adding the arm64 dpkg architecture"
    need_root dpkg --add-architecture arm64
    apt_updated=0
fi
nff=/etc/apt/sources.list.d/bramble-non-free-firmware.sources
if ! grep -rqs 'non-free-firmware' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    say "enabling Debian's non-free-firmware component ($nff)"
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
    need_root tee "$nff" >/dev/null <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: $codename $codename-updates
Components: non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt_updated=0
fi
# A fresh architecture or component needs fresh package lists.
if ! apt-cache show raspi-firmware >/dev/null 2>&1; then apt_update; fi

# 2. Host packages.
missing=()
for pkg in "${host_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
    apt_update
    say "installing ${missing[*]}"
    # Packages start their services when installed (etcd-server's would listen
    # on 2379/2380) unless a policy-rc.d refuses: put one in place for the
    # install if the machine has none (containers often do).
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# bramble deps.sh: no service starts while it installs packages\nexit 101\n' |
            need_root tee "$policy" >/dev/null
        need_root chmod 0755 "$policy"
        own_policy=1
        trap 'need_root rm -f "$policy"' EXIT
    fi
    need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    if ((own_policy)); then
        need_root rm -f "$policy"
        trap - EXIT
    fi
fi

# Debian's etcd service stays disabled and stopped: the host's etcd is only
# for tests, which start their own.
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    if systemctl is-enabled --quiet etcd.service 2>/dev/null || systemctl is-active --quiet etcd.service 2>/dev/null; then
        say "disabling and stopping Debian's etcd service"
        need_root systemctl disable --now etcd.service
    fi
else
    if [[ -f /run/etcd.pid ]] && start-stop-daemon --status --pidfile /run/etcd.pid --exec /usr/bin/etcd 2>/dev/null; then
        say "stopping Debian's etcd service"
        need_root start-stop-daemon --stop --quiet --oknodo --retry 10 --pidfile /run/etcd.pid --exec /usr/bin/etcd
    fi
    if compgen -G '/etc/rc[2-5].d/S*etcd' >/dev/null && command -v update-rc.d >/dev/null; then
        say "disabling Debian's etcd service at boot"
        need_root update-rc.d etcd disable >/dev/null
    fi
fi

# 3. The Rust cross target.
target=aarch64-unknown-linux-musl
if command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    :
elif command -v rustup >/dev/null && rustup target add "$target"; then
    :
else
    echo "deps: rustup could not add $target; installing Debian's rustc-web and libstd-rust-web-dev:arm64 (target aarch64-unknown-linux-gnu)" >&2
    apt_update
    need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rustc-web cargo-web libstd-rust-web-dev:arm64
fi

# 4. Pinned packages for the image, checked by sha256.
mkdir -p "$cache"
while read -r -u 3 name version arch sha file; do
    [[ -z $name || $name == \#* ]] && continue
    dest="$cache/$file"
    if [[ -f $dest ]] && echo "$sha  $dest" | sha256sum --quiet -c - 2>/dev/null; then
        continue
    fi
    rm -f "$dest"
    apt_update
    say "downloading $name $version ($arch)"
    spec="$name=$version"
    [[ $arch != all ]] && spec="$name:$arch=$version"
    tmp=$(mktemp -d)
    chmod 0777 "$tmp"
    if ! (cd "$tmp" && apt-get download -qq "$spec" </dev/null); then
        rm -rf "$tmp"
        echo "deps: cannot download $spec (is the pinned version still in the archive?)" >&2
        exit 1
    fi
    got=$(ls "$tmp"/*.deb)
    actual=$(sha256sum "$got" | cut -d' ' -f1)
    if [[ $actual != "$sha" ]]; then
        rm -rf "$tmp"
        echo "deps: $file: sha256 $actual does not match the lock ($sha); refusing it" >&2
        exit 1
    fi
    mv "$got" "$dest"
    rm -rf "$tmp"
done 3< <(cat "${locks[@]}")

# 5. U-Boot for QEMU's virt machine, used by the harness as -bios.
qemu_uboot="$cache/../u-boot-qemu/u-boot.bin"
uboot_deb=$(awk '$1 == "u-boot-qemu" {print $5}' "${locks[0]}")
stamp="$cache/../u-boot-qemu/.from"
if [[ ! -f $qemu_uboot || $(cat "$stamp" 2>/dev/null) != "$uboot_deb" ]]; then
    say "extracting U-Boot for qemu_arm64"
    tmp=$(mktemp -d)
    dpkg-deb -x "$cache/$uboot_deb" "$tmp"
    mkdir -p "$(dirname "$qemu_uboot")"
    cp "$tmp/usr/lib/u-boot/qemu_arm64/u-boot.bin" "$qemu_uboot"
    echo "$uboot_deb" >"$stamp"
    rm -rf "$tmp"
fi
say "dependencies are in place"
