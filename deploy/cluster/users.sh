#!/usr/bin/env bash
# Creates the Demolab logins on a running RabbitMQ cluster (run on any one node, as root; users
# and permissions are cluster-wide). Passwords come from the environment, never from this file:
#   DEMOLAB_HUB_MQTT_PASSWORD=... DEMOLAB_GW_PASSWORDS="gw-aarhus:lab-aarhus:pw1 gw-odense:lab-odense:pw2" ./users.sh
# Each gateway entry is user:lab:password; the user is the gateway id (as with Mosquitto).
#
# RabbitMQ checks topic permissions as regular expressions on the AMQP routing key: the MQTT
# topic with `/` turned into `.`, and (mqtt.sparkplug = true) `spBv1.0` written `spBv1___0`. So
# `spBv1.0/lab-aarhus/NDATA/gw-aarhus` is `spBv1___0.lab-aarhus.NDATA.gw-aarhus`. A publish the
# grant refuses closes the client's connection without a PUBACK (measured with RabbitMQ 3.10),
# and so does a refused subscription.
set -euo pipefail
# RABBITMQCTL may carry arguments, e.g. "rabbitmqctl -n rabbit@broker-2".
read -r -a ctl <<<"${RABBITMQCTL:-rabbitmqctl}"
vhost=/
# What the MQTT plugin itself needs for a session: its own `mqtt-subscription-<client id>…`
# queue (declared, bound, read) and the `amq.topic` exchange. Nothing else.
queues_configure='^mqtt-subscription-'
queues_rw='^(amq\.topic|mqtt-subscription-.*)$'

add_user() { # user password publish-regex subscribe-regex
  if ! "${ctl[@]}" -q list_users | awk '{print $1}' | grep -qx "$1"; then
    "${ctl[@]}" -q add_user "$1" "$2"
  else
    "${ctl[@]}" -q change_password "$1" "$2"
  fi
  "${ctl[@]}" -q set_permissions -p "$vhost" "$1" "$queues_configure" "$queues_rw" "$queues_rw"
  "${ctl[@]}" -q set_topic_permissions -p "$vhost" "$1" amq.topic "$3" "$4"
}

# The hub (Sparkplug primary host): reads every group, publishes its STATE and NCMD/DCMD.
add_user demolab-hub "${DEMOLAB_HUB_MQTT_PASSWORD:?set DEMOLAB_HUB_MQTT_PASSWORD}" \
  '^spBv1___0\.' '^spBv1___0\.'

# Each gateway publishes only under its own group (lab) and reads its commands and the STATE.
for entry in ${DEMOLAB_GW_PASSWORDS:-}; do
  IFS=: read -r user lab password <<<"$entry"
  lab_re=${lab//./\\.}
  add_user "$user" "$password" "^spBv1___0\.${lab_re}\." "^spBv1___0\.(${lab_re}|STATE)\."
done

# The default guest account may only log in from localhost; remove it all the same.
"${ctl[@]}" -q delete_user guest 2>/dev/null || true
