// Package registry keeps the model bundles gnld serves: it loads and
// checks a bundle folder once however many cameras use it, keeps it
// loaded (so that a product changeover to it costs no load), loads it
// afresh when its files change, and names the bundles of a product root
// (GNLD_MODEL_ROOT/<product>).
//
// A Loaded bundle is shared: its cameras each take a pipeline from
// Loaded.Model (pipeline.Model.Pipeline), which keeps the interpreters
// alive until the last of them closes, so the registry can replace or drop
// a bundle while cameras still score with it.
package registry

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"gocv.io/x/gocv"

	"gnld/models"
	"gnld/pipeline"
	"gnld/runtime"
)

// Loaded is one checked bundle and its interpreters.
type Loaded struct {
	Dir    string // the folder as configured
	Bundle *models.Bundle
	Model  *pipeline.Model
	// Fingerprint identifies the folder's files when the load began
	// (Fingerprint); the registry loads the folder afresh once it differs.
	Fingerprint string
	Took        Timings
}

// Timings are the stages of one load, for the log and the changeover benchmark.
type Timings struct{ Load, Build, Warmup time.Duration }

// Total is the whole load.
func (t Timings) Total() time.Duration { return t.Load + t.Build + t.Warmup }

// Registry holds the loaded bundles by folder. Its methods are safe from
// any goroutine; loads of one folder do not run twice at once.
type Registry struct {
	opts         runtime.Options
	interpreters func(cameras int) int
	keys         []ed25519.PublicKey // trusted signers; none: bundles need no signature

	mu    sync.Mutex
	byDir map[string]*Loaded
	busy  map[string]*sync.Mutex // one load at a time per folder
}

// New makes a registry whose bundles run with opts; interpreters says how
// many interpreters a bundle shared by `cameras` cameras gets
// (pipeline.Interpreters with gnld's settings). With keys, it loads only
// bundles signed by one of them (models.LoadSigned).
func New(opts runtime.Options, interpreters func(cameras int) int, keys []ed25519.PublicKey) *Registry {
	return &Registry{opts: opts, interpreters: interpreters, keys: keys, byDir: map[string]*Loaded{}, busy: map[string]*sync.Mutex{}}
}

// Load loads the bundle in dir afresh for `cameras` cameras and checks it:
// model.json and the model's hash (models.Load), the tensors against
// model.json (pipeline.Load) and one warm-up frame, which must give a
// finite score. It then serves Get(dir) in place of the bundle loaded
// before, which stays open for the cameras still using it. On error the
// bundle loaded before stays.
func (r *Registry) Load(dir string, cameras int) (*Loaded, error) {
	lock := r.folderLock(dir)
	lock.Lock()
	defer lock.Unlock()
	return r.load(dir, cameras)
}

// Get is the bundle loaded from dir, loading it (Load) when it is not
// loaded yet or its files have changed since.
func (r *Registry) Get(dir string, cameras int) (*Loaded, error) {
	lock := r.folderLock(dir)
	lock.Lock()
	defer lock.Unlock()
	r.mu.Lock()
	l := r.byDir[dir]
	r.mu.Unlock()
	if l != nil && l.Fingerprint == Fingerprint(dir) {
		return l, nil
	}
	return r.load(dir, cameras)
}

// Loaded is the bundle loaded from dir without loading anything; nil when none is.
func (r *Registry) Loaded(dir string) *Loaded {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byDir[dir]
}

func (r *Registry) folderLock(dir string) *sync.Mutex {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.busy[dir]
	if m == nil {
		m = &sync.Mutex{}
		r.busy[dir] = m
	}
	return m
}

func (r *Registry) load(dir string, cameras int) (*Loaded, error) {
	l := &Loaded{Dir: dir, Fingerprint: Fingerprint(dir)}
	t0 := time.Now()
	var b *models.Bundle
	var err error
	if len(r.keys) > 0 {
		b, err = models.LoadSigned(dir, r.keys)
	} else {
		b, err = models.Load(dir)
	}
	if err != nil {
		return nil, err
	}
	l.Bundle = b
	t1 := time.Now()
	l.Took.Load = t1.Sub(t0)
	if l.Model, err = pipeline.Load(b, r.opts, r.interpreters(max(cameras, 1))); err != nil {
		return nil, fmt.Errorf("model %s: %w", b.ModelPath, err)
	}
	t2 := time.Now()
	l.Took.Build = t2.Sub(t1)
	p := l.Model.Pipeline()
	err = WarmUp(p)
	p.Close()
	if err != nil {
		l.Model.Close()
		return nil, fmt.Errorf("model %s: warm-up frame: %w", b.ModelPath, err)
	}
	l.Took.Warmup = time.Since(t2)
	r.mu.Lock()
	old := r.byDir[dir]
	r.byDir[dir] = l
	r.mu.Unlock()
	if old != nil {
		old.Model.Close() // its cameras' pipelines keep it until they switch
	}
	return l, nil
}

// Drop forgets the bundle loaded from dir (its cameras keep it until they
// close their pipelines).
func (r *Registry) Drop(dir string) {
	r.mu.Lock()
	l := r.byDir[dir]
	delete(r.byDir, dir)
	r.mu.Unlock()
	if l != nil {
		l.Model.Close()
	}
}

// Close drops every bundle.
func (r *Registry) Close() {
	r.mu.Lock()
	all := r.byDir
	r.byDir = map[string]*Loaded{}
	r.mu.Unlock()
	for _, l := range all {
		l.Model.Close()
	}
}

// WarmUp runs one mid-grey frame through p: the first invoke of an
// interpreter is slower than the rest, and a model that cannot score it
// (an error, NaN or infinite score) must not go into service.
func WarmUp(p *pipeline.Pipeline) error {
	m := p.Meta()
	frame := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(128, 128, 128, 0), m.Input.Height, m.Input.Width, gocv.MatTypeCV8UC3)
	defer frame.Close()
	res, err := p.Process(frame)
	if err != nil {
		return err
	}
	if s := float64(res.Score); math.IsNaN(s) || math.IsInf(s, 0) {
		return fmt.Errorf("score %v: the model's output is not a finite map; re-export the bundle with `gnl export`", res.Score)
	}
	return nil
}

// Fingerprint identifies the files in the bundle folder dir (through a
// symbolic link): the real path and each file's name, size, modification
// time and inode. It changes when a file is written or replaced, or the
// link is pointed elsewhere. It reads no file.
func Fingerprint(dir string) string {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "missing: " + err.Error()
	}
	entries, err := os.ReadDir(real)
	if err != nil {
		return "unreadable: " + err.Error()
	}
	var sb strings.Builder
	sb.WriteString(real)
	for _, e := range entries {
		st, err := e.Info()
		if err != nil || !st.Mode().IsRegular() {
			continue // gone meanwhile, or not a file
		}
		var ino uint64
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			ino = sys.Ino
		}
		fmt.Fprintf(&sb, "|%s:%d:%d:%d", e.Name(), st.Size(), st.ModTime().UnixNano(), ino)
	}
	return sb.String()
}

// productName is what a product may be called: it names a folder under
// the product root, so no path separators, no leading dot, no spaces.
var productName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ErrProduct marks a product name or folder that cannot be served.
var ErrProduct = errors.New("product")

// ProductDir is the bundle folder of product under root, checked to be a
// folder with a model.json; the error names the problem and the fix.
func ProductDir(root, product string) (string, error) {
	if !productName.MatchString(product) {
		return "", fmt.Errorf("%w %q: a product name is 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'; "+
			"send the name of a folder in GNLD_MODEL_ROOT", ErrProduct, clip(product))
	}
	dir := filepath.Join(root, product)
	if _, err := os.Stat(filepath.Join(dir, "model.json")); err != nil {
		return "", fmt.Errorf("%w %q: no bundle at %s (%v); known products: %s; copy its bundle there (model.json, model.tflite)",
			ErrProduct, product, dir, errors.Unwrap(err), strings.Join(Products(root), ", "))
	}
	return dir, nil
}

// Products are the names of the folders under root that hold a
// model.json, sorted; none when root is empty or unreadable.
func Products(root string) []string {
	if root == "" {
		return nil
	}
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if !productName.MatchString(e.Name()) {
			continue
		}
		if st, err := os.Stat(filepath.Join(root, e.Name(), "model.json")); err == nil && st.Mode().IsRegular() {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}

// clip shortens a name for an error message.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
