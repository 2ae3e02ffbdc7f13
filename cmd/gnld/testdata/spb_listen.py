"""An independent Sparkplug B host for TestSparkplugEndToEnd.

Run with /opt/spb-venv/bin/python (the build root's venv: pysparkplug
0.6.1, paho-mqtt 1.6.1, protobuf 6.33). It subscribes to spBv1.0/# and
decodes every message with pysparkplug (Message.from_mqtt_message: the
payload class of the topic's message type, DATA messages against the
metric types of their NBIRTH or DBIRTH, as a host does), then prints one
JSON line per message: topic, type, group, node, device, seq, bdSeq (when
the payload has one), and each metric's name, type, value and null flag. A
message pysparkplug cannot decode gives a line with "error".

Lines on stdin are commands: "rebirth GROUP NODE" publishes an NCMD with
Node Control/Rebirth = true, encoded by pysparkplug. End of input ends it.

    python spb_listen.py --port 1883 --client-id spb-test
"""

import argparse
import json
import sys
import threading

import paho.mqtt.client as mqtt
import pysparkplug as spb

_out = threading.Lock()


def emit(obj):
    with _out:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def metric_json(m):
    value = m.value
    if isinstance(value, bytes):
        value = value.hex()
    return {
        "name": m.name,
        "datatype": m.datatype.name,
        "value": value,
        "is_null": m.is_null,
        "timestamp": m.timestamp,
    }


class Listener:
    def __init__(self, port, client_id):
        self.births = {}  # (group, node, device or None) -> NBirth / DBirth
        self.ready = False
        # A persistent session: what is published while the broker
        # restarts reaches us once we are back (with queue_qos0_messages).
        self.client = mqtt.Client(client_id=client_id, clean_session=False)
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
        self.client.on_connect = self.on_connect
        self.client.on_subscribe = self.on_subscribe
        self.client.on_message = self.on_message
        self.client.connect("127.0.0.1", port, keepalive=10)

    def on_connect(self, client, userdata, flags, rc):
        client.subscribe("spBv1.0/#", qos=1)

    def on_subscribe(self, client, userdata, mid, granted_qos):
        if not self.ready:
            self.ready = True
            emit({"ready": True})

    def on_message(self, client, userdata, msg):
        rec = {"topic": msg.topic, "qos": msg.qos, "retain": bool(msg.retain)}
        try:
            topic = spb.Topic.from_str(msg.topic)
            kind = spb.MessageType(topic.message_type)
            rec.update(type=kind.value, group=topic.group_id, node=topic.edge_node_id, device=topic.device_id)
            birth = None
            if kind in (spb.MessageType.DDATA, spb.MessageType.DCMD):
                birth = self.births.get((topic.group_id, topic.edge_node_id, topic.device_id))
            elif kind in (spb.MessageType.NDATA, spb.MessageType.NCMD):
                birth = self.births.get((topic.group_id, topic.edge_node_id, None))
            payload = spb.Message.from_mqtt_message(msg, birth=birth).payload
            if kind in (spb.MessageType.NBIRTH, spb.MessageType.DBIRTH):
                self.births[(topic.group_id, topic.edge_node_id, topic.device_id)] = payload
            if kind == spb.MessageType.NDEATH:
                metrics = [payload.bd_seq_metric]
            else:
                metrics = list(payload.metrics)
            rec["seq"] = getattr(payload, "seq", None)
            rec["timestamp"] = getattr(payload, "timestamp", None)
            rec["metrics"] = [metric_json(m) for m in metrics]
            bd = [m.value for m in metrics if m.name == "bdSeq"]
            rec["bdSeq"] = bd[0] if bd else None
        except Exception as e:  # report, never stop listening
            rec["error"] = repr(e)
            rec["payload_hex"] = msg.payload.hex()
        emit(rec)

    def rebirth(self, group, node):
        now = spb.get_current_timestamp()
        cmd = spb.NCmd(
            timestamp=now,
            metrics=(spb.Metric(timestamp=now, name="Node Control/Rebirth", datatype=spb.DataType.BOOLEAN, value=True),),
        )
        info = self.client.publish(f"spBv1.0/{group}/NCMD/{node}", cmd.encode(), qos=1)
        info.wait_for_publish(timeout=5)
        emit({"sent": "rebirth", "group": group, "node": node})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--client-id", default="spb-listen")
    args = ap.parse_args()
    lis = Listener(args.port, args.client_id)
    lis.client.loop_start()
    for line in sys.stdin:
        words = line.split()
        if len(words) == 3 and words[0] == "rebirth":
            lis.rebirth(words[1], words[2])
        elif words:
            emit({"error": f"unknown command {line.strip()!r}"})
    lis.client.disconnect()
    lis.client.loop_stop()


if __name__ == "__main__":
    main()
