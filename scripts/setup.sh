#!/usr/bin/env bash
# Installs what arbor's build, tests, demo and benchmarks need on a Debian machine,
# and builds the shared test corpus. Idempotent and quick once done. Needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

PACKAGES=(
  # build: the bundled SQLite needs a C compiler; libostree/glib/fuse for interop and FUSE
  gcc pkg-config libostree-dev libglib2.0-dev libfuse3-dev
  # tests and benchmarks: real tools users have
  ostree fuse3 attr libcap2-bin util-linux uidmap debootstrap zstd hyperfine findutils grub-common
  # the D-Bus daemon's tests: a private dbus-daemon, busctl (systemd), gdbus, polkitd,
  # dbus-python, and GLib (Gio) through Python's gi
  dbus-daemon systemd libglib2.0-bin polkitd python3-dbus python3-gi gir1.2-glib-2.0
  # the Cockpit page in a real browser, and the HTTP API with curl
  cockpit-ws cockpit-bridge cockpit-system chromium chromium-driver python3-selenium curl
  # packages: composing trees from a package set, building test .debs
  mmdebstrap
  # remote updates: a real web server serving published repositories, and a real OCI
  # registry (the CNCF distribution registry) with htpasswd logins
  nginx-light docker-registry apache2-utils
  # images and disks: the Debian package and lintian, podman and skopeo for
  # Containerfiles, partitioning and file systems, GRUB's EFI modules
  debhelper dpkg-dev lintian podman skopeo fdisk dosfstools mtools e2fsprogs cpio
  grub-efi-amd64-bin
  # the VM boot loop: qemu under TCG with UEFI firmware
  qemu-system-x86 ovmf
  # the TUF conformance suite: a Python virtualenv, and faketime for its expiry tests
  python3-venv faketime
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  [[ $(id -u) == 0 ]] || { echo "setup: installing ${missing[*]} needs root" >&2; exit 1; }
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The registry package starts a system-wide registry on :5000; the tests start their
# own on free ports, so the package's service stays off.
if command -v systemctl >/dev/null && systemctl is-enabled docker-registry >/dev/null 2>&1; then
  systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi
command -v cargo >/dev/null || {
  echo "setup: cargo not found; install a Rust toolchain (rustup, Rust >= 1.85) first" >&2
  exit 1
}

# The Cockpit page's styles: PatternFly, from npm (cockpit/build.sh, pinned by its lock).
if ! command -v npm >/dev/null; then
  [[ $(id -u) == 0 ]] || { echo "setup: installing npm needs root" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
fi
bash "$here/cockpit/build.sh"

# The TUF conformance suite's Python dependencies (its pyproject.toml's pins), from
# PyPI into a virtualenv of their own; scripts/tuf-conformance.sh runs the suite.
tuf_venv=${ARBOR_TUF_VENV:-/var/tmp/arbor-tuf-venv}
if [[ ! -f $tuf_venv/READY ]]; then
  rm -rf "$tuf_venv"
  python3 -m venv "$tuf_venv"
  "$tuf_venv/bin/pip" install -q --disable-pip-version-check \
    "securesystemslib[crypto]==1.4.0" "tuf==7.0.0" "pytest==9.1.1" "pytest-json-report==1.5.0"
  touch "$tuf_venv/READY"
fi

# bootctl (to check our boot entries with a real loader tool) ships in systemd-boot,
# whose maintainer scripts may install a boot loader: take only the binary, from the
# package matching the installed systemd (it links libsystemd-shared of that version).
tools=/var/cache/arbor-tools
if ! command -v bootctl >/dev/null && [[ ! -x $tools/bootctl ]]; then
  version=$(dpkg-query -W -f='${Version}' systemd)
  work=$(mktemp -d); chmod 755 "$work"
  (cd "$work" && apt-get download -q "systemd-boot=$version" >/dev/null 2>&1) || {
    echo "setup: cannot download systemd-boot=$version for bootctl" >&2; exit 1; }
  dpkg-deb -x "$work"/systemd-boot_*.deb "$work/x"
  mkdir -p "$tools" && cp "$work/x/usr/bin/bootctl" "$tools/bootctl" && rm -rf "$work"
fi

# Packages the test images install on top of the corpus (arbor's run-time libraries,
# polkitd, systemd-boot's EFI binary), downloaded once so that image builds run
# offline: apt works out what corpus a lacks from the corpus's own dpkg status.
images=${ARBOR_IMAGES:-/var/tmp/arbor-images}
corpus_dir=${ARBOR_CORPUS:-/var/tmp/arbor-corpus}
fetch_image_debs() {
  [[ -f $images/debs/READY ]] && return
  rm -rf "$images/debs.tmp" && mkdir -p "$images/debs.tmp/partial"
  apt-get install --download-only -y -q --no-install-recommends \
    -o Dir::State::status="$corpus_dir/a/var/lib/dpkg/status" \
    -o Dir::Cache::archives="$images/debs.tmp" \
    libostree-1-1 libglib2.0-0 polkitd systemd-boot-efi >/dev/null ||
    { echo "setup: downloading the packages the test images need failed" >&2; exit 1; }
  rm -rf "$images/debs.tmp/partial" "$images/debs.tmp/lock"
  touch "$images/debs.tmp/READY"
  rm -rf "$images/debs" && mv "$images/debs.tmp" "$images/debs"
}

# The same for the trixie images (corpus t), from trixie's archive through a private
# apt configuration: the packages are trixie's (libglib2.0-0t64, trixie's
# systemd-boot), whatever release this machine runs. fetch_trixie_debs DIR PACKAGE...
# fills $images/DIR once (debs-trixie: what the trixie image adds to the corpus, with
# systemd-boot, whose systemd-bless-boot must agree with arbor's health check;
# debs-trixie-dracut: Debian's dracut, which the trixie-dracut image puts in place of
# initramfs-tools).
fetch_trixie_debs() {
  local dir=$images/$1 apt=$images/apt-$1 mirror
  shift
  # READY names the packages: a changed list fetches again.
  [[ ! -d $corpus_dir/t || ( -f $dir/READY && $(cat "$dir/READY") == "$*" ) ]] && return
  mirror=$(awk '/^URIs:/ && !/security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [[ -n $mirror ]] || mirror=$(awk '/^deb / && !/security/ {print $2; exit}' /etc/apt/sources.list)
  rm -rf "$apt" "$dir.tmp"
  mkdir -p "$apt/lists/partial" "$apt/cache" "$dir.tmp/partial"
  echo "deb $mirror trixie main" > "$apt/sources.list"
  local opts=(-o Dir::Etc::SourceList="$apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
    -o Dir::State::Lists="$apt/lists" -o Dir::Cache="$apt/cache"
    -o Dir::State::status="$corpus_dir/t/var/lib/dpkg/status"
    -o Dir::Cache::archives="$dir.tmp" -o Debug::NoLocking=1)
  { apt-get "${opts[@]}" update -q &&
    apt-get "${opts[@]}" install --download-only -y -q --no-install-recommends "$@"; } >/dev/null ||
    { echo "setup: downloading the trixie packages $* failed" >&2; exit 1; }
  rm -rf "$dir.tmp/partial" "$dir.tmp/lock" "$apt"
  echo "$*" > "$dir.tmp/READY"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
}

# The corpus: real Debian bookworm trees, built once and cached.
shared=${ARBOR_SHARED:-$here/../shared}
if [[ ${ARBOR_SKIP_CORPUS:-} != 1 ]]; then
  [[ -x $shared/corpus/make-trees.sh || -f $shared/corpus/make-trees.sh ]] || {
    echo "setup: $shared/corpus/make-trees.sh not found (set ARBOR_SHARED)" >&2
    exit 1
  }
  bash "$shared/corpus/make-trees.sh" >/dev/null
  fetch_image_debs
  fetch_trixie_debs debs-trixie libostree-1-1 libglib2.0-0t64 polkitd systemd-boot-efi systemd-boot
  fetch_trixie_debs debs-trixie-dracut dracut
fi
