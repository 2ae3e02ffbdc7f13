package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"
)

// Trigger mode (GNLD_CAMERA_<NAME>_TRIGGER=mqtt): a PLC publishes on
// gnl/<site>/<camera>/trigger and gnld scores the first frame the camera
// captures after the trigger arrived, once per trigger, in arrival order.
// The camera keeps capturing; frames with no trigger waiting are not
// scored (counted as frames_not_scored). Triggers that arrive while the
// model is busy wait in a bounded queue (GNLD_TRIGGER_QUEUE); when it is
// full a trigger is refused, counted and logged. Nothing is dropped
// without a count and a log line.
//
// A genicam: camera in trigger mode is not free-running: it is set to
// software trigger (capture.Config.SoftwareTrigger), and the worker fires
// the camera's trigger when it takes a trigger from the queue, so that each
// trigger gives exactly one frame, which answers it. A trigger the camera
// gives no frame for (not connected, no frame within the wait) is answered
// at once with a not_scored result whose reason says why, and counted as
// no_frame.

// trigger is one accepted trigger message.
type trigger struct {
	partID string
	fields map[string]json.RawMessage // the payload's other fields, echoed in the result
	at     time.Time                  // arrival
}

// maxTriggerPayload bounds a trigger message.
const maxTriggerPayload = 64 << 10

// maxPartID bounds a part id.
const maxPartID = 256

const triggerFormat = `send JSON such as {"part_id":"4711"} (other fields are echoed back) or a plain id such as 4711`

// parseTrigger reads a trigger payload: a JSON object with part_id (a
// string or a number) and any other fields, a JSON string, or a plain id.
func parseTrigger(payload []byte) (trigger, error) {
	p := bytes.TrimSpace(payload)
	switch {
	case len(p) == 0:
		return trigger{}, errors.New("empty payload; " + triggerFormat)
	case len(p) > maxTriggerPayload:
		return trigger{}, fmt.Errorf("payload of %d bytes, more than %d; %s", len(p), maxTriggerPayload, triggerFormat)
	case p[0] == '{':
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(p, &fields); err != nil {
			return trigger{}, fmt.Errorf("not valid JSON (%v); %s", err, triggerFormat)
		}
		raw, ok := fields["part_id"]
		if !ok {
			return trigger{}, errors.New(`JSON without "part_id"; ` + triggerFormat)
		}
		delete(fields, "part_id")
		id, err := jsonID(raw)
		if err != nil {
			return trigger{}, err
		}
		if len(fields) == 0 {
			fields = nil
		}
		return trigger{partID: id, fields: fields}, checkID(id)
	case p[0] == '"':
		var id string
		if err := json.Unmarshal(p, &id); err != nil {
			return trigger{}, fmt.Errorf("not a valid JSON string (%v); %s", err, triggerFormat)
		}
		return trigger{partID: id}, checkID(id)
	case p[0] == '[':
		return trigger{}, errors.New("a JSON array; " + triggerFormat)
	}
	return trigger{partID: string(p)}, checkID(string(p))
}

// jsonID reads part_id's value: a string, or a number kept as written.
func jsonID(raw json.RawMessage) (string, error) {
	if string(raw) == "null" {
		return "", fmt.Errorf(`"part_id" is null, want a string or a number; %s`, triggerFormat)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err == nil {
		return n.String(), nil
	}
	return "", fmt.Errorf(`"part_id" is %s, want a string or a number; %s`, raw, triggerFormat)
}

func checkID(id string) error {
	switch {
	case id == "":
		return errors.New("empty part id; " + triggerFormat)
	case len(id) > maxPartID:
		return fmt.Errorf("part id of %d bytes, more than %d", len(id), maxPartID)
	case !utf8.ValidString(id):
		return errors.New("part id is not UTF-8 text")
	case strings.ContainsFunc(id, unicode.IsControl):
		return fmt.Errorf("part id %q contains control characters", id)
	}
	return nil
}

// triggerQueue is one camera's queue of triggers, filled by the MQTT
// handler (receive) and emptied by the camera's worker.
type triggerQueue struct {
	camera string
	log    *slog.Logger
	ch     chan trigger

	mu      sync.Mutex // orders receive's push against stop's drain
	stopped bool

	received, answered, overflow, malformed, unanswered, notScored, noFrame atomic.Uint64
}

// triggerStats is the trigger part of a camera's stats.
type triggerStats struct {
	Received   uint64 `json:"received"`   // accepted into the queue
	Answered   uint64 `json:"answered"`   // results published
	Waiting    int    `json:"waiting"`    // in the queue now
	Overflow   uint64 `json:"overflow"`   // refused: the queue was full
	Malformed  uint64 `json:"malformed"`  // payload not understood, or retained
	Unanswered uint64 `json:"unanswered"` // accepted, but the camera stopped first
	NotScored  uint64 `json:"frames_not_scored"`
	// NoFrame counts the triggers of a software-triggered (genicam)
	// camera that got no frame: each was answered with a not_scored
	// result that says why (also counted in answered).
	NoFrame uint64 `json:"no_frame,omitempty"`
}

func newTriggerQueue(camera string, size int, log *slog.Logger) *triggerQueue {
	return &triggerQueue{camera: camera, log: log.With("camera", camera), ch: make(chan trigger, size)}
}

func (q *triggerQueue) stats() triggerStats {
	return triggerStats{
		Received: q.received.Load(), Answered: q.answered.Load(), Waiting: len(q.ch),
		Overflow: q.overflow.Load(), Malformed: q.malformed.Load(), Unanswered: q.unanswered.Load(),
		NotScored: q.notScored.Load(), NoFrame: q.noFrame.Load(),
	}
}

// receive is the MQTT handler of gnl/<site>/<camera>/trigger. It never
// blocks.
func (q *triggerQueue) receive(payload []byte, retained bool, at time.Time) {
	if retained {
		n := q.malformed.Add(1)
		q.log.Warn("trigger ignored: retained message (it would repeat at every reconnect); publish triggers without the retain flag",
			"payload", clip(payload), "malformed", n)
		return
	}
	t, err := parseTrigger(payload)
	if err != nil {
		n := q.malformed.Add(1)
		q.log.Warn("trigger ignored: malformed", "err", err, "payload", clip(payload), "malformed", n)
		return
	}
	t.at = at
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.stopped {
		q.unanswered.Add(1)
		q.log.Warn("trigger unanswered: the camera has stopped", "part_id", t.partID)
		return
	}
	select {
	case q.ch <- t:
		q.received.Add(1)
	default:
		n := q.overflow.Add(1)
		q.log.Warn("trigger refused: queue full, the model is slower than the triggers (GNLD_TRIGGER_QUEUE)",
			"part_id", t.partID, "queue", cap(q.ch), "overflow", n)
	}
}

// stop ends the queue when the worker returns: cur (if any) and the
// triggers still queued are counted and logged as unanswered, and so is
// any trigger that arrives later.
func (q *triggerQueue) stop(cur *trigger) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.stopped = true
	var ids []string
	if cur != nil {
		ids = append(ids, cur.partID)
	}
	for len(q.ch) > 0 {
		ids = append(ids, (<-q.ch).partID)
	}
	if len(ids) > 0 {
		q.unanswered.Add(uint64(len(ids)))
		q.log.Warn("triggers unanswered: the camera stopped first", "count", len(ids), "part_ids", strings.Join(ids, ","))
	}
}

// clip cuts a payload to 200 bytes for the log (slog quotes it).
func clip(p []byte) string {
	if len(p) > 200 {
		return string(p[:200]) + "..."
	}
	return string(p)
}
