#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (tests/fuzz/corpus/<target>/):
small, real examples of what each parser reads. Run it again after changing
a format; files it does not write (regression inputs, kept by hand after a
crash was fixed) are left alone. Deterministic: the same files every time."""

import gzip
import hashlib
import io
import json
import os
import struct
import tarfile

ROOT = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(ROOT))


def put(target, name, data):
    d = os.path.join(ROOT, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def tar_of(entries):
    """entries: (name, kind, payload, mode); kind is file, dir, symlink, link, chr."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, kind, payload, mode in entries:
            info = tarfile.TarInfo(name)
            info.mode = mode
            info.mtime = 1700000000
            if kind == "file":
                info.size = len(payload)
                t.addfile(info, io.BytesIO(payload))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                         "link": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE}[kind]
            if kind in ("symlink", "link"):
                info.linkname = payload
            t.addfile(info)
    return buf.getvalue()


def gz(data):
    return gzip.compress(data, mtime=0)


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


LAYER = tar_of([
    ("etc/", "dir", None, 0o755),
    ("etc/hostname", "file", b"seed\n", 0o644),
    ("usr/bin/", "dir", None, 0o755),
    ("usr/bin/app", "file", b"#!/bin/sh\necho hello\n", 0o755),
    ("usr/bin/sh", "symlink", "app", 0o777),
    ("usr/bin/hard", "link", "usr/bin/app", 0o755),
    ("tmp/.keep", "file", b"", 0o644),
])
WHITEOUTS = tar_of([
    ("etc/", "dir", None, 0o755),
    ("etc/.wh.hostname", "file", b"", 0o644),
    ("var/", "dir", None, 0o755),
    ("var/.wh..wh..opq", "file", b"", 0o644),
    ("var/log", "file", b"x", 0o600),
])

# --- layers (oci_unpack) ---
put("oci_unpack", "layer.tar", LAYER)
put("oci_unpack", "layer.tar.gz", gz(LAYER))
put("oci_unpack", "whiteouts.tar", WHITEOUTS)


# --- an OCI image layout archive (oci_import, oci_manifest) ---
def image(layers, arch="arm64", variant=None, docker=False):
    blobs = {}
    diff_ids, descs = [], []
    for raw in layers:
        blob = gz(raw)
        blobs[sha(blob)] = blob
        diff_ids.append(sha(raw))
        descs.append({"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip" if docker
                      else "application/vnd.oci.image.layer.v1.tar+gzip",
                      "digest": sha(blob), "size": len(blob)})
    config = {"architecture": arch, "os": "linux",
              "config": {"Cmd": ["/usr/bin/app"], "Env": ["PATH=/usr/bin"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    if variant:
        config["variant"] = variant
    config = json.dumps(config, sort_keys=True).encode()
    blobs[sha(config)] = config
    manifest = {"schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json" if docker
                else "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json" if docker
                           else "application/vnd.oci.image.config.v1+json",
                           "digest": sha(config), "size": len(config)},
                "layers": descs}
    manifest = json.dumps(manifest, sort_keys=True).encode()
    blobs[sha(manifest)] = manifest
    return manifest, blobs


def archive(index, blobs):
    entries = [("oci-layout", "file", b'{"imageLayoutVersion":"1.0.0"}', 0o644),
               ("index.json", "file", json.dumps(index, sort_keys=True).encode(), 0o644),
               ("blobs/", "dir", None, 0o755), ("blobs/sha256/", "dir", None, 0o755)]
    for digest, data in sorted(blobs.items()):
        entries.append(("blobs/sha256/" + digest.split(":")[1], "file", data, 0o644))
    return tar_of(entries)


REF = "org.opencontainers.image.ref.name"
manifest, blobs = image([LAYER, WHITEOUTS])
single = {"schemaVersion": 2, "manifests": [{
    "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(manifest),
    "size": len(manifest), "annotations": {REF: "docker.io/library/seed:v1"}}]}
put("oci_import", "image.tar", archive(single, blobs))
put("oci_import", "image.tar.gz", gz(archive(single, blobs)))
put("oci_manifest", "manifest.json", manifest)

amd, amd_blobs = image([LAYER], arch="amd64")
arm, arm_blobs = image([LAYER], arch="arm64", variant="v8")
inner = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(amd), "size": len(amd),
     "platform": {"architecture": "amd64", "os": "linux"}},
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(arm), "size": len(arm),
     "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(b"attestation"),
     "size": 11, "platform": {"architecture": "unknown", "os": "unknown"}}]}
inner_json = json.dumps(inner, sort_keys=True).encode()
multi_blobs = {**amd_blobs, **arm_blobs, sha(inner_json): inner_json}
multi = {"schemaVersion": 2, "manifests": [{
    "mediaType": "application/vnd.oci.image.index.v1+json", "digest": sha(inner_json),
    "size": len(inner_json), "annotations": {REF: "registry.example:5000/team/app:2"}}]}
put("oci_import", "multi-platform.tar", archive(multi, multi_blobs))
put("oci_manifest", "index.json", inner_json)
docker, _ = image([LAYER], docker=True)
put("oci_manifest", "docker-manifest.json", docker)
put("oci_manifest", "docker-list.json", json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
    "manifests": [{"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                   "digest": sha(docker), "size": len(docker),
                   "platform": {"architecture": "arm", "os": "linux", "variant": "v7"}}]}))
put("oci_manifest", "platform", "linux/arm64/v8")

# --- the machine configuration (config_parse, config_patch) ---
full = open(os.path.join(REPO, "lib/config/tests/data/full.yaml")).read()
minimal = """version: v1alpha1
machine:
  type: worker
  hostname: node-2
  ca:
    crt: |
      -----BEGIN CERTIFICATE-----
      MIIBszCCAVmgAwIBAgIUZ2VuZXJhdGVk
      -----END CERTIFICATE-----
cluster:
  name: bramble
  controlPlane:
    endpoint: https://10.0.0.10:6443
"""
put("config_parse", "full.yaml", full)
put("config_parse", "minimal.yaml", minimal)
put("config_patch", "merge.yaml", "machine:\n  hostname: node-3\n  network:\n    interfaces:\n"
    "      - interface: eth0\n        mtu: 9000\n      - interface: eth1\n        $patch: delete\n")
put("config_patch", "replace.yaml", "machine:\n  network:\n    $patch: replace\n    interfaces: []\n")
put("config_patch", "json-patch.yaml", '[{"op": "replace", "path": "/machine/hostname", "value": "n"},'
    ' {"op": "add", "path": "/machine/network/interfaces/-", "value": {"interface": "eth9"}},'
    ' {"op": "remove", "path": "/cluster/name"}]\n')
put("config_patch", "with-base.yaml", minimal + "\0" + "cluster: {name: other}\n")

# --- the supervisor (supervisor_control, supervisor_lines) ---
put("supervisor_control", "requests", "\n".join([
    '{"op":"list"}', '{"op":"events","since":0}', '{"op":"logs","service":"svc","tail":5}',
    '{"op":"logs","service":"svc","after":3,"tail":500}', '{"op":"start","service":"svc"}',
    '{"op":"stop","service":"svc"}', '{"op":"restart","service":"svc"}',
    '{"op":"reload","service":"nope"}', '{"op":"note","message":"configuration applied"}',
    '{"op":"bogus"}', 'not json', '']))
put("supervisor_control", "shutdown", '{"op":"list"}\n{"op":"shutdown","kind":"reboot"}\n')
put("supervisor_lines", "output", b"\x40\x00\x07" + b"starting\r\nready on [::]:50000\n"
    + b"x" * 100 + b"\n\xff\xfe not utf-8\npartial")

# --- disks (disk_mbr, disk_fs) ---
def entry(status, kind, lba, sectors):
    return struct.pack("<B3sB3sII", status, b"\0\0\0", kind, b"\0\0\0", lba, sectors)


def sector(entries):
    s = bytearray(512)
    for i, e in enumerate(entries):
        s[446 + 16 * i:446 + 16 * (i + 1)] = e
    s[510:512] = b"\x55\xaa"
    return bytes(s)


# Bramble's layout in miniature: FAT, two slots, an extended partition at
# LBA 4 holding STATE (EBR at 4) and DATA (EBR at 6, the last partition).
mbr = sector([entry(0x80, 0x0c, 1, 1), entry(0, 0x83, 2, 1), entry(0, 0x83, 3, 1),
              entry(0, 0x0f, 4, 4)])
ebr1 = sector([entry(0, 0x83, 1, 1), entry(0, 0x05, 2, 2)])
ebr2 = sector([entry(0, 0x83, 1, 1)])
disk = mbr + bytes(512) * 3 + ebr1 + bytes(512) + ebr2 + bytes(512)
put("disk_mbr", "bramble-layout", disk + struct.pack("<Q", 8192))
put("disk_mbr", "mbr-only", sector([entry(0x80, 0x0c, 2048, 262144), entry(0, 0x83, 264192, 524288)]))

ext4 = bytearray(2048)
sb = 1024
ext4[sb + 0x04:sb + 0x08] = struct.pack("<I", 16384)   # blocks
ext4[sb + 0x18:sb + 0x1c] = struct.pack("<I", 2)       # 4096-byte blocks
ext4[sb + 0x38:sb + 0x3a] = struct.pack("<H", 0xEF53)
ext4[sb + 0x60:sb + 0x64] = struct.pack("<I", 0x80)    # 64bit
ext4[sb + 0x150:sb + 0x154] = struct.pack("<I", 0)
ext4[sb + 0x78:sb + 0x7d] = b"STATE"
# The superblock alone (what ext4::parse reads), then as an image (what
# ext4::read finds 1024 bytes in).
put("disk_fs", "ext4", bytes(ext4[1024:]) * 2)
fat = bytearray(512)
fat[0:3] = b"\xeb\x58\x90"
fat[3:11] = b"mkfs.fat"
fat[0x47:0x52] = b"BRAMBLE    "
fat[0x52:0x5a] = b"FAT32   "
fat[510:512] = b"\x55\xaa"
put("disk_fs", "fat32", bytes(fat))
fat16 = bytearray(512)
fat16[0x2B:0x36] = b"BOOT       "
fat16[0x36:0x3e] = b"FAT16   "
fat16[510:512] = b"\x55\xaa"
put("disk_fs", "fat16", bytes(fat16))

# --- module aliases (module_alias): pattern NUL modalias ---
for name, pattern, alias in [
    ("virtio", "virtio:d00000002v*", "virtio:d00000002v00001AF4"),
    ("pci", "pci:v00001AF4d00001041sv*sd*bc*sc*i*", "pci:v00001AF4d00001041sv00001AF4sd00001100bc01sc00i00"),
    ("of", "of:N*T*Cbrcm,bcm2835-sdhostC*", "of:NmmcT(null)Cbrcm,bcm2835-sdhostCbrcm,other"),
    ("usb", "usb:v0424pEC00d*dc*dsc*dp*ic*isc*ip*in*", "usb:v0424pEC00d0200dc00dsc00dp00icFFisc00ipFFin00"),
    ("brackets", "input:b0019v*p*e*-e*1,*k[74]*,ra*", "input:b0019v0001p0001e0100-e0,1,k74,ramlsfw"),
    ("negated", "x[!0-9]y[^a]z[]]", "xay!z]"),
]:
    put("module_alias", name, pattern.encode() + b"\0" + alias.encode())


# --- DHCP (dhcp_lease): records [step][len u16][packet] ---
def dhcp(kind, yiaddr, options):
    head = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 2, 1, 6, 0, 0, 0, 0, bytes(4),
                       bytes(map(int, yiaddr.split("."))), bytes(4), bytes(4),
                       bytes([2, 0, 0, 0, 0, 1]) + bytes(10), bytes(64), bytes(128))
    opts = bytes([53, 1, kind])
    for code, value in options:
        opts += bytes([code, len(value)]) + value
    return head + b"\x63\x82\x53\x63" + opts + b"\xff"


ip = lambda s: bytes(map(int, s.split(".")))
common = [(54, ip("10.0.2.2")), (1, ip("255.255.255.0")), (3, ip("10.0.2.2")),
          (6, ip("10.0.2.3") + ip("10.0.2.3") + ip("1.1.1.1")), (15, b"example.lan"),
          (12, b"node-1"), (119, b"\x07example\x03lan\x00\x04corp\xc0\x08")]
offer = dhcp(2, "10.0.2.15", common)
ack = dhcp(5, "10.0.2.15", common + [(51, struct.pack("!I", 86400)), (58, struct.pack("!I", 43200)),
                                      (59, struct.pack("!I", 75600))])
nak = dhcp(6, "0.0.0.0", [(54, ip("10.0.2.2"))])
rec = lambda step, pkt: bytes([step]) + struct.pack("<H", len(pkt)) + pkt
put("dhcp_lease", "ack", ack)
put("dhcp_lease", "offer-ack-renew", rec(0x41, offer) + rec(0x41, ack) + rec(0x80, b"")
    + rec(0xc0, ack) + rec(0x80, b"") + rec(0x80, b""))
put("dhcp_lease", "offer-nak", rec(0x41, offer) + rec(0x40, nak) + rec(0x80, b""))

# --- image references (image_reference) ---
for i, ref in enumerate(["busybox", "docker.io/library/busybox:latest", "10.0.2.100:5000/bramble/app:v1",
                         "localhost/app@sha256:" + "ab" * 32, "ghcr.io/org/team/app:1.2-rc.3@sha256:" + "0" * 64,
                         "index.docker.io/user/app", "Registry.Example/app"]):
    put("image_reference", "ref%d" % i, ref)
