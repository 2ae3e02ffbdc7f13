package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"testing"
	"time"

	"gnld/publish"
)

// FuzzTrigger sends arbitrary payloads to a camera's trigger queue, as
// the MQTT handler of gnl/<site>/<camera>/trigger does. Each message must
// be counted exactly once (queued, refused as malformed, or refused as
// overflow), never panic, and an accepted trigger must give a part id
// that checkID allows and a result that marshals to JSON carrying it.
// Seeds: TestParseTrigger's payloads.
func FuzzTrigger(f *testing.F) {
	for _, p := range []string{
		`{"part_id":"4711","station":3,"recipe":{"name":"A"}}`, `{"part_id": 4711}`, `{"part_id": 1e3}`,
		"  P-0001\n", `"P 2"`, "4711", "", `{"part_id":"4711"`, `{"station":3}`, `{"part_id":null}`,
		`{"part_id":["a"]}`, `{"part_id":""}`, `[1,2]`, `"open`, "a\x00b", `{"part_id":"\u00e9\ud800"}`,
	} {
		f.Add([]byte(p), false)
	}
	f.Add([]byte("4711"), true)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	f.Fuzz(func(t *testing.T, payload []byte, retained bool) {
		if tr, err := parseTrigger(payload); err == nil {
			if err := checkID(tr.partID); err != nil {
				t.Fatalf("%q accepted with part id %q: %v", payload, tr.partID, err)
			}
			b, err := json.Marshal(publish.Result{PartID: tr.partID, Trigger: tr.fields})
			if err != nil {
				t.Fatalf("%q: result does not marshal: %v", payload, err)
			}
			var back publish.Result
			if err := json.Unmarshal(b, &back); err != nil || back.PartID != tr.partID {
				t.Fatalf("%q: result %s gives part id %q (%v), want %q", payload, b, back.PartID, err, tr.partID)
			}
		}
		q := newTriggerQueue("a", 1, log)
		q.receive(payload, retained, time.Now())
		s := q.stats()
		if n := s.Received + s.Malformed + s.Overflow + s.Unanswered; n != 1 {
			t.Fatalf("%q (retained %v): counted %d times: %+v", payload, retained, n, s)
		}
	})
}
