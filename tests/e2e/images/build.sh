#!/usr/bin/env bash
# Builds the e2e's two container images from local files, with no registry, no image download
# and no docker engine:
#   OUT_DIR/pause.tar  the pod sandbox image: /pause, a static musl build of pause.c beside this
#                      script; Entrypoint ["/pause"]; tagged with every --pause-ref (default
#                      k8s.gcr.io/pause:3.2 and registry.k8s.io/pause:3.10: kubeadm 1.20's and
#                      today's kubeadm's sandbox image)
#   OUT_DIR/pod.tar    a pod image: Debian's busybox-static /bin/busybox with a /bin symlink per
#                      applet; Cmd ["sh"]; tagged --pod-ref (default e2e.node-attach.test/busybox:1)
#   OUT_DIR/images.env sourceable by sh: the refs, the image IDs (config digests: docker's and
#                      CRI's image ID) and the manifest digests `ctr images ls` shows after import
# Each archive is in the docker-archive format (manifest.json, config JSON, one layer tar),
# which `docker load` (20.10) and `ctr -n k8s.io images import` (containerd 1.6) both accept.
# Deterministic: fixed mtimes (SOURCE_DATE_EPOCH, default 0), sorted entries, owner 0:0, so the
# same inputs (pause.c, compiler, busybox-static version) give the same sha256.
#
# usage: build.sh OUT_DIR [--pause-ref REF]... [--pod-ref REF] [--busybox-deb FILE.deb]
#   busybox-static is fetched with `apt-get download` into a temp dir (the host is not changed)
#   unless --busybox-deb names a .deb. Needs musl-gcc (musl-tools), python3, dpkg-deb.
set -Eeuo pipefail

usage() { echo "usage: $0 OUT_DIR [--pause-ref REF]... [--pod-ref REF] [--busybox-deb FILE.deb]" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then usage; fi
OUT=$1; shift
PAUSE_REFS=()
POD_REF=e2e.node-attach.test/busybox:1
BUSYBOX_DEB=""
while [ $# -gt 0 ]; do
  case $1 in
    --pause-ref) [ $# -ge 2 ] || usage; PAUSE_REFS+=("$2"); shift 2 ;;
    --pod-ref) [ $# -ge 2 ] || usage; POD_REF=$2; shift 2 ;;
    --busybox-deb) [ $# -ge 2 ] || usage; BUSYBOX_DEB=$(realpath "$2"); shift 2 ;;
    *) usage ;;
  esac
done
[ ${#PAUSE_REFS[@]} -gt 0 ] || PAUSE_REFS=(k8s.gcr.io/pause:3.2 registry.k8s.io/pause:3.10)
for ref in "${PAUSE_REFS[@]}" "$POD_REF"; do
  # docker load wants name:tag; no digests, no spaces.
  [[ $ref =~ ^[a-z0-9][a-z0-9._/:-]*:[A-Za-z0-9_][A-Za-z0-9_.-]*$ && ${ref##*/} == *:* ]] || { echo "bad image ref: $ref" >&2; exit 2; }
done
command -v "${CC:=musl-gcc}" >/dev/null || { echo "$CC not found: apt-get install musl-tools" >&2; exit 1; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
chmod 0755 "$WORK"

# The pause binary.
"$CC" -static -Os -s -Wall -Wextra -Werror -o "$WORK/pause" "$HERE/pause.c"

# busybox-static, unpacked into the temp dir only.
if [ -z "$BUSYBOX_DEB" ]; then
  (cd "$WORK" && apt-get download -qq -o APT::Sandbox::User=root busybox-static) \
    || { echo "apt-get download busybox-static failed (run apt-get update, or pass --busybox-deb)" >&2; exit 1; }
  BUSYBOX_DEB=$(ls "$WORK"/busybox-static_*.deb)
fi
BUSYBOX_VERSION=$(dpkg-deb -f "$BUSYBOX_DEB" Version)
dpkg-deb -x "$BUSYBOX_DEB" "$WORK/bb"
[ -x "$WORK/bb/bin/busybox" ] || { echo "no /bin/busybox in $BUSYBOX_DEB" >&2; exit 1; }
"$WORK/bb/bin/busybox" --list | grep -vx busybox | LC_ALL=C sort -u > "$WORK/applets"

case $(dpkg --print-architecture) in
  amd64) ARCH=amd64 ;; arm64) ARCH=arm64 ;; i386) ARCH=386 ;; ppc64el) ARCH=ppc64le ;; s390x) ARCH=s390x ;;
  *) echo "unsupported architecture $(dpkg --print-architecture)" >&2; exit 1 ;;
esac
mkdir -p "$OUT"

python3 - "$OUT" "${SOURCE_DATE_EPOCH:-0}" "$ARCH" "$WORK" "$BUSYBOX_VERSION" "$POD_REF" "${PAUSE_REFS[@]}" <<'PY'
import datetime, hashlib, io, json, os, shlex, sys, tarfile

out, epoch, arch, work, bb_version, pod_ref, *pause_refs = sys.argv[1:]
epoch = int(epoch)
created = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

def sha(b):
    return hashlib.sha256(b).hexdigest()

def tar(entries):
    """entries: {name: (type, mode, data-or-linkname)} -> a ustar archive, sorted, owner 0:0."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name in sorted(entries):
            kind, mode, data = entries[name]
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.mtime = kind, mode, epoch
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            if kind == tarfile.SYMTYPE:
                ti.linkname = data
            elif kind == tarfile.REGTYPE:
                ti.size = len(data)
            t.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()

def file(data, mode=0o644):
    return (tarfile.REGTYPE, mode, data)

DIR = (tarfile.DIRTYPE, 0o755, None)

def image(archive, refs, files, config, comment):
    layer = tar(files)
    cfg = json.dumps({
        "architecture": arch, "os": "linux", "created": created,
        "config": dict(Env=["PATH=" + PATH], **config),
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha(layer)]},
        "history": [{"created": created, "created_by": comment}],
    }, sort_keys=True, separators=(",", ":")).encode()
    cid, lid = sha(cfg), sha(layer)
    manifest = [{"Config": cid + ".json", "RepoTags": refs, "Layers": [lid + "/layer.tar"]}]
    outer = tar({
        "manifest.json": file(json.dumps(manifest, separators=(",", ":")).encode()),
        cid + ".json": file(cfg),
        lid: DIR,
        lid + "/layer.tar": file(layer),
    })
    path = os.path.join(out, archive)
    with open(path + ".tmp", "wb") as f:
        f.write(outer)
    os.replace(path + ".tmp", path)
    # The manifest `ctr images import` writes for this archive (containerd 1.6: Go's compact JSON,
    # in this field order); `ctr images ls` shows its digest.
    ctr_manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": "sha256:" + cid, "size": len(cfg)},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar",
                    "digest": "sha256:" + lid, "size": len(layer)}],
    }, separators=(",", ":")).encode()
    print(f"{archive}: sha256 {sha(outer)}, image {cid[:12]}, {len(outer)} bytes, {' '.join(refs)}")
    return "sha256:" + cid, "sha256:" + sha(ctr_manifest), sha(outer)

def read(p):
    with open(p, "rb") as f:
        return f.read()

pause_id, pause_mf, pause_sha = image("pause.tar", pause_refs, {"pause": file(read(f"{work}/pause"), 0o755)},
                            {"Entrypoint": ["/pause"]}, "tests/e2e/images/pause.c (musl-gcc -static -Os -s)")

with open(f"{work}/applets") as f:
    applets = f.read().split()
pod = {"bin": DIR, "etc": DIR, "tmp": (tarfile.DIRTYPE, 0o1777, None),
       "bin/busybox": file(read(f"{work}/bb/bin/busybox"), 0o755),
       "etc/passwd": file(b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
       "etc/group": file(b"root:x:0:\nnogroup:x:65534:\n")}
pod.update({"bin/" + a: (tarfile.SYMTYPE, 0o777, "busybox") for a in applets if "/" not in a})
pod_id, pod_mf, pod_sha = image("pod.tar", [pod_ref], pod,
                        {"Cmd": ["sh"], "Labels": {"e2e.node-attach.test/busybox-static": bb_version}},
                        f"Debian busybox-static {bb_version}")

env = {"PAUSE_REFS": " ".join(pause_refs), "PAUSE_ID": pause_id, "PAUSE_CTR_MANIFEST": pause_mf,
       "PAUSE_TAR_SHA256": pause_sha, "POD_REF": pod_ref, "POD_ID": pod_id, "POD_CTR_MANIFEST": pod_mf,
       "POD_TAR_SHA256": pod_sha, "BUSYBOX_VERSION": bb_version}
with open(os.path.join(out, "images.env"), "w") as f:
    f.writelines(f"{k}={shlex.quote(v)}\n" for k, v in env.items())
PY
cat "$OUT/images.env"
