#!/bin/sh
# Entrypoint of the NATS containers in deploy/compose.yaml (the nats:*-alpine image).
# greenplate node 1 writes the logins file (nats.logins_file) into a volume these containers
# share, and cannot signal a server in another container; so this script waits for the
# file, runs nats-server, and makes it reload (SIGHUP) whenever the file changes (greenplate
# renames a new file over the old one, so its inode changes).
set -eu
conf=/etc/nats/nats-server.conf
logins=/etc/nats/logins/greenplate-logins.conf

while [ ! -s "$logins" ]; do
  echo "waiting for $logins (greenplate node 1 writes it at start)"
  sleep 2
done

nats-server -c "$conf" &
server=$!
trap 'kill -TERM "$server" 2>/dev/null; wait "$server"; exit $?' TERM INT

seen=$(stat -c %i:%Y:%s "$logins")
while kill -0 "$server" 2>/dev/null; do
  sleep 2 &
  wait $! || true
  now=$(stat -c %i:%Y:%s "$logins" 2>/dev/null || echo "$seen")
  if [ "$now" != "$seen" ]; then
    seen=$now
    echo "reader logins changed; reloading nats-server"
    kill -HUP "$server"
  fi
done
wait "$server"
