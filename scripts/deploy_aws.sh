#!/usr/bin/env bash
# Deploy foodpipe to an AWS EC2 instance (sized for a t2.small) with docker-compose.aws.yml.
# Idempotent: run it again after every change to redeploy. See docs/deployment/aws-setup.md.
#
# Usage: scripts/deploy_aws.sh --host USER@HOST [--key FILE] [OPTIONS]   from your machine, over SSH
#        scripts/deploy_aws.sh --local [OPTIONS]                          on the instance itself
#
# Options:
#   --dir DIR               where the stack lives on the instance
#                           (default /opt/foodpipe; with --local, this clone)
#   --no-swap               do not add a 1 GiB swap file to an instance that has none
#   --compose-version VER   Compose plugin release to install where the OS packages none
#                           (Amazon Linux; default v2.29.7)
#   --dry-run               print every step and the commands it would run; run nothing
#
# Steps (each is safe to repeat):
#   1. install Docker and Docker Compose if missing, start the daemon at boot, and add the
#      user to the docker group (Amazon Linux 2023, Ubuntu, Debian)
#   2. add a 1 GiB swap file if the instance has no swap
#   3. copy the files the stack needs to DIR (src/ is replaced; .env is never touched)
#   4. create DIR/.env from .env.example with generated passwords (an existing .env is kept)
#   5. build the image and start the stack: docker compose -f docker-compose.aws.yml up -d
#   6. wait until scripts/healthcheck.sh --compose docker-compose.aws.yml reports healthy
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf 'deploy_aws: %s\n' "$*" >&2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; }

# What the instance needs to build and run the stack, and nothing more.
FILES=(Dockerfile .dockerignore docker-compose.aws.yml .env.example requirements.txt
  pyproject.toml src scripts/healthcheck.sh scripts/setup_local.sh)

host=""
key=""
dir=""
local_mode=0
swap=1
dry_run=0
compose_version=v2.29.7
while (($#)); do
  case $1 in
    --host) host=${2:?--host needs USER@HOST}; shift ;;
    --key) key=${2:?--key needs a file}; shift ;;
    --dir) dir=${2:?--dir needs a path}; shift ;;
    --local) local_mode=1 ;;
    --no-swap) swap=0 ;;
    --compose-version) compose_version=${2:?--compose-version needs a release, e.g. v2.29.7}; shift ;;
    --dry-run) dry_run=1 ;;
    -h | --help) usage; exit 0 ;;
    *) say "unknown option '$1'"; usage; exit 2 ;;
  esac
  shift
done

if ((local_mode)) && [[ -n $host ]]; then
  say "--host and --local exclude each other"; exit 2
fi
if ((!local_mode)) && [[ -z $host ]]; then
  say "say where: --host USER@HOST (over SSH) or --local (on the instance)"; usage; exit 2
fi
[[ -n $dir ]] || { if ((local_mode)); then dir=$REPO; else dir=/opt/foodpipe; fi; }
[[ $compose_version =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] || { say "--compose-version must look like v2.29.7"; exit 2; }

SSH=(ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o ConnectTimeout=15)
[[ -n $key ]] && SSH+=(-i "$key")

# Every remote script starts with this: sudo only when not root, docker through sudo until
# the docker group applies (it does from the next login on), and either Compose front end.
PRELUDE=$(
  cat <<EOF
set -euo pipefail
DIR=$(printf '%q' "$dir")
SUDO=""; [ "\$(id -u)" -eq 0 ] || SUDO=sudo
D=""; docker info >/dev/null 2>&1 || D=\$SUDO
dc() { if \$D docker compose version >/dev/null 2>&1; then \$D docker compose "\$@"; else \$D docker-compose "\$@"; fi; }
EOF
)

INSTALL_DOCKER=$(
  cat <<EOF
. /etc/os-release
if ! command -v docker >/dev/null 2>&1; then
  case "\$ID" in
    amzn) \$SUDO dnf install -y docker ;;
    ubuntu | debian) \$SUDO apt-get update -qq && \$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io ;;
    *) echo "unsupported OS '\$ID': install Docker and Docker Compose by hand, then run again" >&2; exit 1 ;;
  esac
fi
\$SUDO systemctl enable --now docker
if ! \$SUDO docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
  case "\$ID" in
    ubuntu) \$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose-v2 ;;
    debian) \$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose ;;
    *)
      # No package: the release binary, checked against the checksum published with it.
      arch=\$(uname -m)
      name=docker-compose-linux-\$arch
      url=https://github.com/docker/compose/releases/download/$compose_version/\$name
      tmp=\$(mktemp -d)
      curl -fsSL -o "\$tmp/\$name" "\$url"
      curl -fsSL -o "\$tmp/\$name.sha256" "\$url.sha256"
      (cd "\$tmp" && sha256sum -c "\$name.sha256")
      \$SUDO install -D -m 0755 "\$tmp/\$name" /usr/local/lib/docker/cli-plugins/docker-compose
      rm -rf "\$tmp"
      ;;
  esac
fi
if [ "\$(id -u)" -ne 0 ] && ! id -nG | tr ' ' '\n' | grep -qx docker; then
  \$SUDO usermod -aG docker "\$(id -un)"
fi
\$SUDO docker version --format 'docker {{.Server.Version}}'
dc version
EOF
)

ADD_SWAP=$(
  cat <<'EOF'
if [ -n "$(swapon --show --noheadings 2>/dev/null)" ]; then
  echo "swap already on: $(swapon --show --noheadings | awk '{print $1, $3}' | tr '\n' ' ')"
else
  [ -f /swapfile ] || { $SUDO fallocate -l 1G /swapfile || $SUDO dd if=/dev/zero of=/swapfile bs=1M count=1024; }
  $SUDO chmod 600 /swapfile
  $SUDO mkswap /swapfile >/dev/null
  $SUDO swapon /swapfile
  grep -q '^/swapfile ' /etc/fstab || echo '/swapfile none swap sw 0 0' | $SUDO tee -a /etc/fstab >/dev/null
  echo "swap on: /swapfile 1G"
fi
EOF
)

PREPARE_DIR=$(
  cat <<'EOF'
$SUDO mkdir -p "$DIR"
$SUDO chown "$(id -u):$(id -g)" "$DIR"
rm -rf "$DIR/src"
EOF
)

WRITE_ENV=$(
  cat <<'EOF'
cd "$DIR"
bash scripts/setup_local.sh --env-only
chmod 600 .env
EOF
)

START=$(
  cat <<'EOF'
cd "$DIR"
# `docker build` needs no buildx plugin (some distributions ship Compose without it); the
# stack then starts from the image it just tagged, and Compose recreates what changed.
$D docker build --pull -t foodpipe:local .
dc -f docker-compose.aws.yml up -d --remove-orphans
dc -f docker-compose.aws.yml ps
EOF
)

VERIFY=$(
  cat <<'EOF'
cd "$DIR"
$D scripts/healthcheck.sh --compose docker-compose.aws.yml --wait 300
EOF
)

step=0
announce() {
  step=$((step + 1))
  printf '\n%d. %s\n' "$step" "$1"
}

# on_target SCRIPT: run SCRIPT, after the prelude, on the instance.
on_target() {
  local script="$PRELUDE"$'\n'"$1"
  if ((local_mode)); then
    bash -c "$script"
  else
    "${SSH[@]}" "$host" bash -s <<<"$script"
  fi
}

# remote DESCRIPTION SCRIPT: one step; --dry-run prints SCRIPT instead of running it.
remote() {
  local line
  announce "$1"
  if ((dry_run)); then
    while IFS= read -r line; do printf '   | %s\n' "$line"; done <<<"$2"
  else
    on_target "$2"
  fi
}

copy_files() {
  announce "copy ${FILES[*]} to $dir"
  if ((local_mode)) && [[ $dir -ef $REPO ]]; then
    printf '   (already in place: deploying from this clone)\n'
    return
  fi
  if ((dry_run)); then
    if ((local_mode)); then
      printf '   $ tar -C %q -czf - %s | tar -C %q -xzf -\n' "$REPO" "${FILES[*]}" "$dir"
    else
      printf '   $ tar -C %q -czf - %s | ssh %s "tar -C %q -xzf -"\n' "$REPO" "${FILES[*]}" "$host" "$dir"
    fi
    return
  fi
  on_target "$PREPARE_DIR"
  if ((local_mode)); then
    tar -C "$REPO" --exclude='__pycache__' --exclude='*.egg-info' -czf - "${FILES[@]}" | tar -C "$dir" -xzf -
  else
    tar -C "$REPO" --exclude='__pycache__' --exclude='*.egg-info' -czf - "${FILES[@]}" \
      | "${SSH[@]}" "$host" "tar -C $(printf '%q' "$dir") -xzf -"
  fi
}

where=${host:-this machine}
((dry_run)) && say "dry run: the steps for $where, $dir (nothing is run)"
if ((!dry_run)) && [[ -n $host ]]; then
  "${SSH[@]}" "$host" true || { say "cannot log in to $host over SSH (key, user, security group?)"; exit 3; }
fi

remote "install Docker and Docker Compose if missing" "$INSTALL_DOCKER"
if ((swap)); then
  remote "add a 1 GiB swap file if there is no swap" "$ADD_SWAP"
else
  announce "swap: skipped (--no-swap)"
fi
copy_files
remote "create .env from .env.example with generated passwords (an existing .env is kept)" "$WRITE_ENV"
remote "build the image and start the stack (docker-compose.aws.yml)" "$START"
remote "wait until the pipeline is healthy" "$VERIFY"

if ((dry_run)); then
  say "dry run: nothing was changed"
else
  say "deployed to $where:$dir; logs: docker compose -f docker-compose.aws.yml logs -f consumer"
fi
