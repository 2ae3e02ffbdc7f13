package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// keygen, sign and verify on a copy of the default bundle: verify accepts
// it as gnld would, refuses it once a file changed, and keygen never
// overwrites a key.
func TestKeygenSignVerify(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "line")
	bundle := copyImages(t, defaultBundle, []string{"model.json", "model.tflite", "drift.json"})
	var out, errb bytes.Buffer
	ctl := func(args ...string) error { out.Reset(); return run(context.Background(), args, &out, &errb) }
	if err := ctl("keygen", "--out", key); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(key + ".key"); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("private key file: %v %v; want mode 0600", st, err)
	}
	if err := ctl("keygen", "--out", key); err == nil || !strings.Contains(err.Error(), "does not overwrite") {
		t.Errorf("second keygen: %v", err)
	}
	if err := ctl("sign", "--key", key+".key", bundle); err != nil || !strings.Contains(out.String(), "3 files signed") {
		t.Fatalf("sign: %v %q", err, out.String())
	}
	if err := ctl("verify", "--pubkeys", key+".pub", bundle); err != nil || !strings.Contains(out.String(), ": ok, gnl-") {
		t.Fatalf("verify: %v %q", err, out.String())
	}
	os.WriteFile(filepath.Join(bundle, "drift.json"), []byte("{}"), 0o644)
	if err := ctl("verify", "--pubkeys", key+".pub", bundle); err == nil || !strings.Contains(out.String(), "REFUSED") ||
		!strings.Contains(out.String(), "drift.json is not the file that was signed") {
		t.Errorf("verify after a change: %v %q", err, out.String())
	}
	if err := ctl("sign", "--key", filepath.Join(bundle, "model.json"), bundle); err == nil || !strings.Contains(err.Error(), "not a private key") {
		t.Errorf("sign with a file that is no key: %v", err)
	}
}
