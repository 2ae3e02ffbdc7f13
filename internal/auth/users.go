package auth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"sync"
	"syscall"
	"unicode/utf8"

	"golang.org/x/crypto/bcrypt"
)

// Role is what an account may do. Roles are ordered: each one may do what
// the ones below it may.
type Role int

const (
	// Viewer sees the page: cameras, scores, history.
	Viewer Role = iota + 1
	// Operator also marks frames and teaches the model.
	Operator
	// Admin also manages accounts.
	Admin
)

var roleNames = map[Role]string{Viewer: "viewer", Operator: "operator", Admin: "admin"}

func (r Role) String() string {
	if s, ok := roleNames[r]; ok {
		return s
	}
	return fmt.Sprintf("Role(%d)", int(r))
}

// ParseRole reads "viewer", "operator" or "admin".
func ParseRole(s string) (Role, error) {
	for r, name := range roleNames {
		if s == name {
			return r, nil
		}
	}
	return 0, fmt.Errorf("unknown role %q: use viewer, operator or admin", s)
}

// MarshalText writes the role's name, so that JSON holds "operator".
func (r Role) MarshalText() ([]byte, error) {
	if _, ok := roleNames[r]; !ok {
		return nil, fmt.Errorf("unknown role %d", int(r))
	}
	return []byte(r.String()), nil
}

// UnmarshalText reads a role's name.
func (r *Role) UnmarshalText(b []byte) error {
	v, err := ParseRole(string(b))
	if err != nil {
		return err
	}
	*r = v
	return nil
}

// User is an account as the rest of gnld sees it: no password hash.
type User struct {
	Name string `json:"name"`
	Role Role   `json:"role"`
}

// HashCost is the bcrypt cost of new password hashes (2^12 rounds: about
// a quarter of a second on an edge CPU). Tests lower it to
// bcrypt.MinCost. Existing hashes keep the cost they were made with.
var HashCost = 12

// MinPassword is the shortest password accepted, in characters. bcrypt
// reads at most 72 bytes, so that is the longest.
const (
	MinPassword = 10
	maxPassword = 72
)

var nameRE = regexp.MustCompile(`^[a-z0-9._-]{1,32}$`)

// Users is the accounts file (GNLD_HTTP_USERS), held in memory. Its methods
// are goroutine-safe. Add, SetPassword, SetRole and Remove change memory
// only; Save writes the file.
//
// The file is JSON, mode 0600, written by gnlctl user or by gnld itself
// (the admin endpoints):
//
//	{"users":[{"name":"ana","role":"operator","hash":"$2a$12$..."}]}
type Users struct {
	path string

	mu   sync.RWMutex
	accs map[string]account
	stat os.FileInfo // the file as last read or written; nil: neither

	dummyOnce sync.Once
	dummy     []byte // a hash to check unknown names against
}

type account struct {
	Name string `json:"name"`
	Role Role   `json:"role"`
	Hash string `json:"hash"`
}

type usersFile struct {
	Users []account `json:"users"`
}

// NewUsers is an empty set of accounts that Save writes to path (for
// gnlctl user add, which creates the file).
func NewUsers(path string) *Users {
	return &Users{path: path, accs: map[string]account{}}
}

// LoadUsers reads the accounts file at path. A missing file is an error
// that says how to create one (and errors.Is(err, fs.ErrNotExist)).
func LoadUsers(path string) (*Users, error) {
	info, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, notExist(fmt.Sprintf("users file %s does not exist: create it with `gnlctl user add NAME --role admin --file %s`", path, path))
	case err != nil:
		return nil, fmt.Errorf("users file: %w", err)
	case !info.Mode().IsRegular():
		return nil, fmt.Errorf("users file %s is not a regular file", path)
	case info.Mode().Perm()&0o077 != 0:
		return nil, fmt.Errorf("users file %s has mode %04o, but it holds password hashes: run `chmod 600 %s`", path, info.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return nil, fmt.Errorf("users file %s: %w (gnld reads and writes it as its own user: chown the file to that user)", path, err)
		}
		return nil, fmt.Errorf("users file: %w", err)
	}
	var f usersFile
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf(`users file %s: %v (expected {"users":[{"name":"ana","role":"operator","hash":"$2a$12$..."}]}, as gnlctl user add writes it)`, path, err)
	}
	u := NewUsers(path)
	u.stat = info
	for i, a := range f.Users {
		if err := checkName(a.Name); err != nil {
			return nil, fmt.Errorf("users file %s: account %d: %w", path, i+1, err)
		}
		if _, ok := roleNames[a.Role]; !ok {
			return nil, fmt.Errorf("users file %s: account %q has no role: use viewer, operator or admin", path, a.Name)
		}
		if _, err := bcrypt.Cost([]byte(a.Hash)); err != nil {
			return nil, fmt.Errorf("users file %s: account %q: the hash is not a bcrypt hash (%v): set a password with `gnlctl user passwd %s --file %s`", path, a.Name, err, a.Name, path)
		}
		if _, dup := u.accs[a.Name]; dup {
			return nil, fmt.Errorf("users file %s: account %q appears twice", path, a.Name)
		}
		u.accs[a.Name] = a
	}
	return u, nil
}

// notExist is an error message for which errors.Is(err, fs.ErrNotExist).
type notExist string

func (e notExist) Error() string { return string(e) }
func (e notExist) Unwrap() error { return fs.ErrNotExist }

// Path is the file that Save writes.
func (u *Users) Path() string { return u.path }

func checkName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("bad user name %q: use 1 to 32 of a-z, 0-9, '.', '_' and '-'", name)
	}
	return nil
}

func checkPassword(password string) error {
	if n := utf8.RuneCountInString(password); n < MinPassword {
		return fmt.Errorf("password too short (%d characters): use at least %d", n, MinPassword)
	}
	if len(password) > maxPassword {
		return fmt.Errorf("password too long (%d bytes): bcrypt reads at most %d", len(password), maxPassword)
	}
	return nil
}

func hash(password string) (string, error) {
	if err := checkPassword(password); err != nil {
		return "", err
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), HashCost)
	if err != nil {
		return "", fmt.Errorf("hashing the password: %w", err)
	}
	return string(h), nil
}

// Errors of account changes, for errors.Is.
var (
	ErrUserExists = errors.New("user already exists")
	ErrNoUser     = errors.New("no such user")
	ErrLastAdmin  = errors.New("the last admin cannot be removed or demoted: make another admin first")
)

// Add makes an account. The name is 1 to 32 of a-z, 0-9, '.', '_', '-';
// the password at least MinPassword characters.
func (u *Users) Add(name string, role Role, password string) error {
	if err := checkName(name); err != nil {
		return err
	}
	if _, ok := roleNames[role]; !ok {
		return fmt.Errorf("unknown role %d", int(role))
	}
	if u.has(name) { // before hashing, which is slow
		return fmt.Errorf("%w: %q", ErrUserExists, name)
	}
	h, err := hash(password)
	if err != nil {
		return err
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, ok := u.accs[name]; ok {
		return fmt.Errorf("%w: %q", ErrUserExists, name)
	}
	u.accs[name] = account{Name: name, Role: role, Hash: h}
	return nil
}

func (u *Users) has(name string) bool {
	u.mu.RLock()
	defer u.mu.RUnlock()
	_, ok := u.accs[name]
	return ok
}

// SetPassword gives name a new password.
func (u *Users) SetPassword(name, password string) error {
	if !u.has(name) {
		return fmt.Errorf("%w %q", ErrNoUser, name)
	}
	h, err := hash(password)
	if err != nil {
		return err
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	a, ok := u.accs[name]
	if !ok {
		return fmt.Errorf("%w %q", ErrNoUser, name)
	}
	a.Hash = h
	u.accs[name] = a
	return nil
}

// SetRole changes name's role; it refuses to demote the last admin.
func (u *Users) SetRole(name string, role Role) error {
	if _, ok := roleNames[role]; !ok {
		return fmt.Errorf("unknown role %d", int(role))
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	a, ok := u.accs[name]
	if !ok {
		return fmt.Errorf("%w %q", ErrNoUser, name)
	}
	if a.Role == Admin && role != Admin && u.admins() == 1 {
		return ErrLastAdmin
	}
	a.Role = role
	u.accs[name] = a
	return nil
}

// Remove deletes name's account; it refuses to remove the last admin.
func (u *Users) Remove(name string) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	a, ok := u.accs[name]
	if !ok {
		return fmt.Errorf("%w %q", ErrNoUser, name)
	}
	if a.Role == Admin && u.admins() == 1 {
		return ErrLastAdmin
	}
	delete(u.accs, name)
	return nil
}

// admins counts the admin accounts; u.mu is held.
func (u *Users) admins() int {
	n := 0
	for _, a := range u.accs {
		if a.Role == Admin {
			n++
		}
	}
	return n
}

// List is every account, by name.
func (u *Users) List() []User {
	u.mu.RLock()
	defer u.mu.RUnlock()
	out := make([]User, 0, len(u.accs))
	for _, a := range u.accs {
		out = append(out, User{Name: a.Name, Role: a.Role})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Lookup is name's account.
func (u *Users) Lookup(name string) (User, bool) {
	u.mu.RLock()
	defer u.mu.RUnlock()
	a, ok := u.accs[name]
	return User{Name: a.Name, Role: a.Role}, ok
}

// Check reports whether password is name's. It takes as long for a name
// without an account (bcrypt runs against a dummy hash), so that timing
// does not tell which names exist.
func (u *Users) Check(name, password string) (User, bool) {
	u.mu.RLock()
	a, ok := u.accs[name]
	u.mu.RUnlock()
	if !ok {
		u.dummyOnce.Do(func() {
			u.dummy, _ = bcrypt.GenerateFromPassword([]byte("no such user, no such password"), HashCost)
		})
		bcrypt.CompareHashAndPassword(u.dummy, []byte(password))
		return User{}, false
	}
	if bcrypt.CompareHashAndPassword([]byte(a.Hash), []byte(password)) != nil {
		return User{}, false
	}
	return User{Name: a.Name, Role: a.Role}, true
}

// snapshot and restore undo a change whose Save failed.
func (u *Users) snapshot() map[string]account {
	u.mu.RLock()
	defer u.mu.RUnlock()
	m := make(map[string]account, len(u.accs))
	for k, v := range u.accs {
		m[k] = v
	}
	return m
}

func (u *Users) restore(m map[string]account) {
	u.mu.Lock()
	u.accs = m
	u.mu.Unlock()
}

// changedOnDisk reports whether the file is not the one last read or
// written (gnlctl user changed it), with its state now.
func (u *Users) changedOnDisk() (os.FileInfo, bool) {
	fi, err := os.Stat(u.path)
	if err != nil {
		return nil, false // gone or unreadable: keep what is in memory
	}
	u.mu.RLock()
	old := u.stat
	u.mu.RUnlock()
	return fi, old == nil || !os.SameFile(fi, old) || !fi.ModTime().Equal(old.ModTime()) || fi.Size() != old.Size()
}

// replace takes fresh's accounts and returns those it had.
func (u *Users) replace(fresh *Users) map[string]account {
	accs := fresh.snapshot()
	u.mu.Lock()
	defer u.mu.Unlock()
	old := u.accs
	u.accs, u.stat = accs, fresh.stat
	return old
}

func (u *Users) setStat(fi os.FileInfo) {
	u.mu.Lock()
	u.stat = fi
	u.mu.Unlock()
}

// Save writes the accounts to the file atomically (a temporary file in the
// same folder, then a rename), with mode 0600.
func (u *Users) Save() error {
	u.mu.RLock()
	f := usersFile{Users: make([]account, 0, len(u.accs))}
	for _, a := range u.accs {
		f.Users = append(f.Users, a)
	}
	u.mu.RUnlock()
	sort.Slice(f.Users, func(i, j int) bool { return f.Users[i].Name < f.Users[j].Name })
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("users file %s: %w", u.path, err)
	}
	b = append(b, '\n')
	if err := writeAtomic(u.path, b); err != nil {
		return fmt.Errorf("users file %s: %w", u.path, err)
	}
	if fi, err := os.Stat(u.path); err == nil {
		u.setStat(fi)
	}
	return nil
}

func writeAtomic(path string, b []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp") // mode 0600
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after the rename, a no-op
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if fi, err := os.Stat(path); err == nil && os.Geteuid() == 0 {
		// root (sudo gnlctl user) keeps the file gnld's
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			tmp.Chown(int(st.Uid), int(st.Gid))
		}
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil { // make the rename durable
		d.Sync()
		d.Close()
	}
	return nil
}
