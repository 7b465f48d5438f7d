#!/bin/bash
# SMTP messages/s: Postfix's smtp-source -> {direct, switchyard (protocol = "smtp"),
# HAProxy mode tcp} -> Postfix's smtp-sink, 1 KiB and 100 KiB messages, 1 and 50 sessions,
# one connection per message. Interim script until the `bench smtp` scenario exists.
# Needs Debian postfix (smtp-source, smtp-sink; the service is never started), haproxy, bc.
# Usage: cargo build --release -p switchyard && bench/smtp.sh   (N=<messages> for a quick run)
set -u
SY=${SY:-$(dirname "$0")/../target/release/switchyard}
D=$(mktemp -d); chmod 777 $D
SINK=127.0.0.1:27001; SYP=27002; HAP=27003
/usr/sbin/smtp-sink -u nobody 127.0.0.1:27001 2048 & SINKPID=$!
cat > $D/sy.toml <<EOT
[admin]
listen = "127.0.0.1:27009"
[log]
access = "off"
[[listener]]
name = "mx"
listen = "127.0.0.1:$SYP"
protocol = "smtp"
pool = "sink"
smtp = { hostname = "mx.bench" }
[[pool]]
name = "sink"
servers = [ { address = "$SINK" } ]
EOT
$SY run -c $D/sy.toml > $D/sy.out 2>&1 & SYPID=$!
cat > $D/ha.cfg <<EOT
global
  nbthread 2
  maxconn 9000
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend f
  bind 127.0.0.1:$HAP
  default_backend b
backend b
  server s1 $SINK
EOT
/usr/sbin/haproxy -f $D/ha.cfg > $D/ha.out 2>&1 & HAPID=$!
sleep 1.5
run() { # target port size sessions count
  local start=$(date +%s.%N)
  /usr/sbin/smtp-source -s $4 -m $5 -l $3 -f s@bench.test -t r@bench.test 127.0.0.1:$2 >/dev/null 2>&1
  local end=$(date +%s.%N)
  echo "$1 size=$3 sessions=$4 messages=$5 seconds=$(echo "$end - $start" | bc) msgs_per_s=$(echo "$5 / ($end - $start)" | bc)"
}
for size in 1024 102400; do
  for s in 1 50; do
    n=${N:-$([ $s = 1 ] && echo 2000 || echo 20000)}
    [ $size = 102400 ] && n=$((n/4))
    run direct 27001 $size $s $n
    run switchyard $SYP $size $s $n
    run haproxy $HAP $size $s $n
  done
done
kill $SINKPID $SYPID $HAPID
