package models

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gnld/internal/testfiles"
)

func newKey(t *testing.T) (ed25519.PublicKey, ed25519.PrivateKey) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

// A signed bundle loads; every way of getting an unsigned, foreign or
// changed bundle past the check is refused with an error that names the
// problem and the fix.
func TestSignedBundles(t *testing.T) {
	pub, priv := newKey(t)
	other, otherPriv := newKey(t)
	keys := []ed25519.PublicKey{other, pub}
	signed := func(t *testing.T) string {
		dir := testfiles.CopyDir(t, "default") // has drift.json
		if _, err := Sign(dir, priv); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	if b, err := LoadSigned(signed(t), keys); err != nil || b.Drift == nil {
		t.Fatalf("signed default bundle: %v", err)
	}
	edit := func(dir, name string, f func([]byte) []byte) {
		p := filepath.Join(dir, name)
		b, _ := os.ReadFile(p)
		os.WriteFile(p, f(b), 0o644)
	}
	for _, tc := range []struct {
		name, want string
		spoil      func(dir string)
	}{
		{"unsigned", "not signed", func(dir string) { os.Remove(filepath.Join(dir, SignatureFile)) }},
		{"another key", "not among the 1 trusted keys", func(dir string) { Sign(dir, otherPriv); keysOnly(&keys, pub) }},
		{"model.json changed", "model.json is not the file that was signed", func(dir string) {
			edit(dir, MetaFile, func(b []byte) []byte { return []byte(strings.Replace(string(b), `"gnl-mtd"`, `"gnl-mtx"`, 1)) })
		}},
		{"drift.json changed", "drift.json is not the file that was signed", func(dir string) {
			edit(dir, DriftFile, func(b []byte) []byte { return append(b, ' ') })
		}},
		{"drift.json removed", "signed but missing", func(dir string) { os.Remove(filepath.Join(dir, DriftFile)) }},
		{"model swapped with its hash", "model.json is not the file that was signed", func(dir string) {
			tfl, _ := os.ReadFile("testdata/tiny/model.tflite")
			os.WriteFile(filepath.Join(dir, "model.tflite"), tfl, 0o644)
			edit(dir, MetaFile, func(b []byte) []byte {
				var m map[string]any
				json.Unmarshal(b, &m)
				m["model_sha256"] = sum256(tfl)
				out, _ := json.Marshal(m)
				return out
			})
		}},
		{"list edited", "does not match its list", func(dir string) {
			edit(dir, SignatureFile, func(b []byte) []byte {
				var s Signature
				json.Unmarshal(b, &s)
				s.Files[DriftFile] = strings.Repeat("0", 64)
				out, _ := json.Marshal(s)
				return out
			})
		}},
		{"garbage", "not a bundle signature", func(dir string) { os.WriteFile(filepath.Join(dir, SignatureFile), []byte("{"), 0o644) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			keys = []ed25519.PublicKey{other, pub}
			dir := signed(t)
			tc.spoil(dir)
			_, err := LoadSigned(dir, keys)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "gnlctl sign") {
				t.Errorf("err %v; want one containing %q and the fix", err, tc.want)
			}
		})
	}
	// Unsigned bundles still load without keys (GNLD_MODEL_PUBKEYS unset).
	if _, err := Load(testfiles.CopyDir(t, "default")); err != nil {
		t.Fatal(err)
	}
}

func keysOnly(keys *[]ed25519.PublicKey, k ed25519.PublicKey) { *keys = []ed25519.PublicKey{k} }

func TestParsePublicKeys(t *testing.T) {
	pub, _ := newKey(t)
	line := base64.StdEncoding.EncodeToString(pub)
	keys, err := ParsePublicKeys([]byte("# plant keys\n\n" + line + " line-team\n"))
	if err != nil || len(keys) != 1 || !keys[0].Equal(pub) {
		t.Fatalf("%v %v", keys, err)
	}
	for _, bad := range []string{"", "# only a comment\n", "bm90IGEga2V5\n", line + "\nxyz\n"} {
		if _, err := ParsePublicKeys([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
