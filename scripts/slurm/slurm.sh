#!/usr/bin/env bash
# A single-node Slurm on this machine (munge, slurmctld, slurmd, and slurmdbd + MariaDB so that
# sacct works, and an sshd "login node" on 127.0.0.1:2222), for the tests and for developers.
# Idempotent; needs root (apt-get, daemons).
#
#   bash scripts/slurm/slurm.sh [start]   install what is missing, configure, start, wait for an idle node
#   bash scripts/slurm/slurm.sh stop      stop every daemon it started, by pid
#   bash scripts/slurm/slurm.sh status    sinfo + which daemons are alive
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DB_PASS=${SLURM_DB_PASS:-slurmdb}   # a local test database; mariadbd listens on its unix socket only
PIDFILES=(/run/slurmd.pid /run/slurmctld.pid /run/slurmdbd.pid /run/mysqld/mysqld.pid /run/munge/munged.pid
          /run/sshd-login.pid)
LOGIN=/etc/slurm/login   # the login node's sshd config and keys (tunnel = "ssh" profiles)

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() {  # wait_for <tenths of a second> <command...>
  local n=$1; shift
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "slurm.sh: timed out waiting for: $*" >&2; return 1
}
stop_pidfile() {
  local f=$1 pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$f"
}

case "${1:-start}" in
  stop)
    for f in "${PIDFILES[@]}"; do stop_pidfile "$f"; done
    exit 0 ;;
  status)
    for f in "${PIDFILES[@]}"; do if alive "$f"; then echo "up   $f"; else echo "down $f"; fi; done
    sinfo 2>/dev/null || true
    exit 0 ;;
  start) ;;
  *) echo "usage: slurm.sh [start|stop|status]" >&2; exit 2 ;;
esac

# 1. packages (~1 min on a new machine). libpmix-dev: the pmix plugin dlopens the unversioned libpmix.so.
missing=""
for p in slurmctld slurmd slurm-client munge libpmix-dev slurmdbd mariadb-server openssh-server; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# 2. munge
[ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none; }
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 700 /etc/munge; chmod 400 /etc/munge/munge.key; chmod 755 /run/munge
alive /run/munge/munged.pid || runuser -u munge -- /usr/sbin/munged
wait_for 50 bash -c 'munge -n | unmunge'

# 3. slurm.conf with this machine's CPUs and 90 % of its memory (more than the real RAM drains the node)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
sed -e "s/^NodeName=localhost .*/NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN/" \
    -e 's#^AccountingStorageType=.*#AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\nAccountingStoragePort=6819#' \
    "$HERE/slurm.conf" > /etc/slurm/slurm.conf

# 4. accounting: MariaDB (socket only) + slurmdbd
mkdir -p /run/mysqld; chown mysql:mysql /run/mysqld
[ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
if ! alive /run/mysqld/mysqld.pid; then  # not `alive || nohup ... &`: that backgrounds a subshell holding stdout
  nohup /usr/sbin/mariadbd --user=mysql --skip-networking --socket=/run/mysqld/mysqld.sock \
    --pid-file=/run/mysqld/mysqld.pid >/var/log/slurm/mariadb.log 2>&1 &
fi
wait_for 300 mariadb -e 'select 1'
mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
CONF
chmod 600 /etc/slurm/slurmdbd.conf
alive /run/slurmdbd.pid || slurmdbd
wait_for 300 sacctmgr -n show cluster
sacctmgr -n show cluster format=cluster%40 | grep -qw localcluster || sacctmgr -i add cluster localcluster >/dev/null

# 5. controller and node; a warm-up job absorbs the first scheduling pass (~3 s)
alive /run/slurmctld.pid || slurmctld -c
wait_for 100 bash -c 'scontrol ping | grep -q UP'
alive /run/slurmd.pid || slurmd -N localhost
wait_for 300 bash -c 'sinfo -h -n localhost -o %T | grep -Eq "^(idle|mixed|allocated)$"'
job=$(sbatch --parsable -Q -o /dev/null --wrap true)
wait_for 600 bash -c "scontrol show job $job | grep -q JobState=COMPLETED"

# 6. a "login node": sshd on 127.0.0.1:2222, key-only, with its own config and keys, so that
#    profiles with tunnel = "ssh" (NeMo-Run's SSHTunnel) can be used against this cluster.
#    Client key: /etc/slurm/login/id_ed25519 (see the local-slurm-ssh profile in config/env.example.toml).
mkdir -p "$LOGIN" /run/sshd
[ -s "$LOGIN/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N "" -f "$LOGIN/ssh_host_ed25519_key"
[ -s "$LOGIN/id_ed25519" ] || ssh-keygen -q -t ed25519 -N "" -C nemotron-login -f "$LOGIN/id_ed25519"
cp "$LOGIN/id_ed25519.pub" "$LOGIN/authorized_keys"
cat > "$LOGIN/sshd_config" <<CONF
Port 2222
ListenAddress 127.0.0.1
HostKey $LOGIN/ssh_host_ed25519_key
AuthorizedKeysFile $LOGIN/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowTcpForwarding yes
UsePAM no
StrictModes no
PidFile /run/sshd-login.pid
Subsystem sftp internal-sftp
CONF
# -E: why it stopped, if it does (seen once on a fresh machine: started, then gone before the first login)
alive /run/sshd-login.pid || /usr/sbin/sshd -f "$LOGIN/sshd_config" -E /var/log/sshd-login.log
# trust it as you would trust your cluster's login node (NeMo-Run copies job files with rsync over ssh)
mkdir -p ~/.ssh; chmod 700 ~/.ssh; touch ~/.ssh/known_hosts
known="[127.0.0.1]:2222 $(cut -d' ' -f1,2 "$LOGIN/ssh_host_ed25519_key.pub")"
grep -qxF "$known" ~/.ssh/known_hosts || { ssh-keygen -q -R "[127.0.0.1]:2222" >/dev/null 2>&1 || true; echo "$known" >> ~/.ssh/known_hosts; }
login() { ssh -p 2222 -i "$LOGIN/id_ed25519" -o BatchMode=yes -o ConnectTimeout=5 root@127.0.0.1 true; }
if ! wait_for 50 login; then  # once more from a clean start, then give up with its log
  alive /run/sshd-login.pid && kill "$(cat /run/sshd-login.pid)"; rm -f /run/sshd-login.pid
  /usr/sbin/sshd -f "$LOGIN/sshd_config" -E /var/log/sshd-login.log
  wait_for 50 login || { tail -20 /var/log/sshd-login.log >&2; }
fi
wait_for 50 login
sinfo
