package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"strings"
	"sync"
	"time"
)

// MaxSessionAge is how long a session lasts at most, however active.
const MaxSessionAge = 24 * time.Hour

// maxSessionsPerUser bounds one account's sessions; a new login past it
// ends that account's least recently used session.
const maxSessionsPerUser = 32

// sessionKey is the SHA-256 of a session token. The store holds keys
// only: the token itself lives in the browser's cookie.
type sessionKey [sha256.Size]byte

func keyOf(token string) sessionKey { return sha256.Sum256([]byte(token)) }

// newToken is 32 random bytes, base64url without padding.
func newToken() string {
	b := make([]byte, 32)
	rand.Read(b) // never fails (crypto/rand, Go 1.24)
	return base64.RawURLEncoding.EncodeToString(b)
}

// session is one login.
type session struct {
	user    User
	csrf    string    // sent with every write (X-CSRF-Token or form field csrf)
	created time.Time // for MaxSessionAge
	seen    time.Time // last request, for the idle limit
}

// sessions is the in-memory session store. Sessions do not survive a
// restart of gnld: everyone logs in again.
type sessions struct {
	ttl time.Duration // idle limit

	mu   sync.Mutex
	byID map[sessionKey]*session
}

func newSessions(ttl time.Duration) *sessions {
	return &sessions{ttl: ttl, byID: map[sessionKey]*session{}}
}

// create starts a session for u and returns its token.
func (s *sessions) create(u User, now time.Time) (token string, sess session) {
	token = newToken()
	sess = session{user: u, csrf: newToken(), created: now, seen: now}
	s.mu.Lock()
	defer s.mu.Unlock()
	var oldest sessionKey
	n := 0
	for k, v := range s.byID { // a login is rare: sweep here, no goroutine
		switch {
		case s.expired(v, now):
			delete(s.byID, k)
		case v.user.Name == u.Name:
			if n == 0 || v.seen.Before(s.byID[oldest].seen) {
				oldest = k
			}
			n++
		}
	}
	if n >= maxSessionsPerUser {
		delete(s.byID, oldest)
	}
	s.byID[keyOf(token)] = &sess
	return token, sess
}

func (s *sessions) expired(v *session, now time.Time) bool {
	return now.Sub(v.seen) >= s.ttl || now.Sub(v.created) >= MaxSessionAge
}

// get is the live session of token, marked as seen now; an expired one is
// deleted.
func (s *sessions) get(token string, now time.Time) (sessionKey, session, bool) {
	if token == "" {
		return sessionKey{}, session{}, false
	}
	k := keyOf(token)
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.byID[k]
	if !ok {
		return k, session{}, false
	}
	if s.expired(v, now) {
		delete(s.byID, k)
		return k, session{}, false
	}
	v.seen = now
	return k, *v, true
}

func (s *sessions) delete(k sessionKey) {
	s.mu.Lock()
	delete(s.byID, k)
	s.mu.Unlock()
}

// endUser ends name's sessions except keep's, and says how many ended.
func (s *sessions) endUser(name string, keep sessionKey) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for k, v := range s.byID {
		if v.user.Name == name && k != keep {
			delete(s.byID, k)
			n++
		}
	}
	return n
}

// limiter counts login attempts per key (a remote address, a user name)
// in a sliding window. An attempt counts from its start, so that parallel
// guesses cannot slip through while bcrypt runs; a successful one is
// taken back.
type limiter struct {
	limit  int
	window time.Duration

	mu   sync.Mutex
	hits map[string][]time.Time // per key, oldest first, at most limit
}

func newLimiter(limit int, window time.Duration) *limiter {
	return &limiter{limit: limit, window: window, hits: map[string][]time.Time{}}
}

// limiterKeys are the keys of an attempt from ip for name. The name is
// bounded so that guessed names cannot grow the map's memory much.
func limiterKeys(ip, name string) []string {
	name = strings.ToLower(name)
	if len(name) > 64 {
		name = name[:64]
	}
	return []string{"ip " + ip, "user " + name}
}

// begin records an attempt at now under each key, or, when a key already
// holds limit attempts in the window, records nothing and returns how
// long until the oldest of them leaves it.
func (l *limiter) begin(now time.Time, keys []string) (wait time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.hits) > 4096 {
		for k := range l.hits {
			l.prune(k, now)
		}
	}
	for _, k := range keys {
		if h := l.prune(k, now); len(h) >= l.limit {
			wait = max(wait, h[0].Add(l.window).Sub(now))
		}
	}
	if wait > 0 {
		return wait
	}
	for _, k := range keys {
		l.hits[k] = append(l.hits[k], now)
	}
	return 0
}

// prune drops k's attempts older than the window; l.mu is held.
func (l *limiter) prune(k string, now time.Time) []time.Time {
	h := l.hits[k]
	i := 0
	for i < len(h) && now.Sub(h[i]) >= l.window {
		i++
	}
	h = h[i:]
	if len(h) == 0 {
		delete(l.hits, k)
		return nil
	}
	l.hits[k] = h
	return h
}

// forgive takes back the attempt begin recorded at the time at.
func (l *limiter) forgive(at time.Time, keys []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range keys {
		h := l.hits[k]
		for i := len(h) - 1; i >= 0; i-- {
			if h[i].Equal(at) {
				h = append(h[:i:i], h[i+1:]...)
				break
			}
		}
		if len(h) == 0 {
			delete(l.hits, k)
		} else {
			l.hits[k] = h
		}
	}
}
