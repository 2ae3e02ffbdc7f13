package publish

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Message is one MQTT publication.
type Message struct {
	Topic   string
	Payload []byte
}

// spool is a bounded first-in first-out queue of messages on disk: one
// file per message, named by a sequence number that keeps growing across
// restarts (0000000000000000042.msg). Each file holds the topic, a newline
// and the payload, and is written to a temporary name, fsync'd, renamed
// into place and the folder fsync'd, so a message is either wholly there
// or not at all, even after a power cut.
//
// When full, push drops the oldest message, counts it and logs it.
//
// The folder is made 0700 and the files 0600, whatever the umask: results
// are the plant's data, for gnld's user only.
//
// Not goroutine-safe: the Publisher's sender goroutine is its only user.
// len and dropped may be read from any goroutine.
type spool struct {
	dir  string
	max  int
	log  *slog.Logger
	seqs []uint64 // on disk, oldest first
	next uint64

	n         atomic.Int64  // len(seqs), for other goroutines
	drops     atomic.Uint64 // dropped because the spool was full (or a file unreadable)
	lastWarn  time.Time     // rate-limits the drop warning
	warnDrops uint64        // drops at lastWarn
}

const spoolExt = ".msg"

// openSpool opens (creating) dir and picks up what an earlier run left.
func openSpool(dir string, max int, log *slog.Logger) (*spool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	s := &spool{dir: dir, max: max, log: log, next: 1}
	for _, e := range entries {
		name := e.Name()
		if strings.HasSuffix(name, ".tmp") { // a write cut short; never acknowledged
			os.Remove(filepath.Join(dir, name))
			continue
		}
		seq, err := strconv.ParseUint(strings.TrimSuffix(name, spoolExt), 10, 64)
		if err != nil || !strings.HasSuffix(name, spoolExt) {
			continue // not ours
		}
		s.seqs = append(s.seqs, seq)
	}
	slices.Sort(s.seqs)
	if len(s.seqs) > 0 {
		s.next = s.seqs[len(s.seqs)-1] + 1
	}
	s.n.Store(int64(len(s.seqs)))
	// Probe that the folder is writable now rather than at the first outage.
	probe := filepath.Join(dir, "probe.tmp")
	if err := os.WriteFile(probe, nil, 0o600); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	os.Remove(probe)
	for len(s.seqs) > s.max { // the limit was lowered since the last run
		s.dropOldest()
	}
	return s, nil
}

func (s *spool) path(seq uint64) string {
	return filepath.Join(s.dir, fmt.Sprintf("%019d%s", seq, spoolExt))
}

func (s *spool) len() int { return int(s.n.Load()) }

// push appends m durably, dropping the oldest message when full.
func (s *spool) push(m Message) error {
	if len(s.seqs) >= s.max {
		s.dropOldest()
	}
	seq := s.next
	final := s.path(seq)
	tmp := final + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	_, err = f.Write(append(append([]byte(m.Topic), '\n'), m.Payload...))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, final)
	}
	if err == nil {
		err = syncDir(s.dir)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("spool: %w", err)
	}
	s.next++
	s.seqs = append(s.seqs, seq)
	s.n.Store(int64(len(s.seqs)))
	return nil
}

// peek returns the oldest message. A file that cannot be read is dropped
// (counted and logged) and the next one tried.
func (s *spool) peek() (Message, bool) {
	for len(s.seqs) > 0 {
		b, err := os.ReadFile(s.path(s.seqs[0]))
		topic, payload, ok := bytes.Cut(b, []byte{'\n'})
		if err == nil && ok && len(topic) > 0 {
			return Message{Topic: string(topic), Payload: payload}, true
		}
		if err == nil {
			err = errors.New("no topic line")
		}
		s.log.Warn("spool: unreadable message dropped", "file", s.path(s.seqs[0]), "err", err)
		s.drops.Add(1)
		s.pop()
	}
	return Message{}, false
}

// pop removes the oldest message, after it was published.
func (s *spool) pop() {
	if len(s.seqs) == 0 {
		return
	}
	os.Remove(s.path(s.seqs[0]))
	s.seqs = s.seqs[1:]
	s.n.Store(int64(len(s.seqs)))
}

// dropOldest makes room in a full spool. It warns at most every 10s,
// with the running count, so a long outage is never silent nor noisy.
func (s *spool) dropOldest() {
	s.pop()
	n := s.drops.Add(1)
	if time.Since(s.lastWarn) >= 10*time.Second {
		s.log.Warn("spool: full, oldest results dropped", "max", s.max, "dropped", n-s.warnDrops, "dropped_total", n)
		s.lastWarn, s.warnDrops = time.Now(), n
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
