package models

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzLoad gives Load arbitrary model.json bytes beside the tiny bundle's
// model.tflite: it must return an error that names model.json, or a
// bundle whose model lies inside its folder; never panic. Seeds: the
// repository's model.json files and the cut-down ones of TestBundleErrors'
// kind.
func FuzzLoad(f *testing.F) {
	for _, dir := range []string{tiny, "testdata/tiny-float", "default"} {
		data, err := os.ReadFile(filepath.Join(dir, MetaFile))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range []string{"", "{}", "null", "[]", `{"format_version": 1}`, `{"input": {"mean": [1e999]}}`} {
		f.Add([]byte(s))
	}
	dir := f.TempDir()
	model, err := filepath.Abs(filepath.Join(tiny, "model.tflite"))
	if err != nil {
		f.Fatal(err)
	}
	if err := os.Symlink(model, filepath.Join(dir, "model.tflite")); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, MetaFile), data, 0o600); err != nil {
			t.Fatal(err)
		}
		b, err := Load(dir)
		if err != nil {
			if !strings.Contains(err.Error(), dir) {
				t.Fatalf("error %q does not name the bundle's files", err)
			}
			return
		}
		if filepath.Dir(b.ModelPath) != dir {
			t.Fatalf("model file %q outside the bundle %s", b.ModelPath, dir)
		}
	})
}

// FuzzSignature gives the signature reader arbitrary signature.json and
// public-key bytes: ParseSignature and ParsePublicKeys return an error or
// a well-formed value, and LoadSigned on a bundle carrying those bytes
// refuses or loads, never panics. A signature that verifies cannot come
// from the fuzzer (it would need the key), so every input must be refused
// by LoadSigned unless it is the seed's own.
func FuzzSignature(f *testing.F) {
	dir := f.TempDir()
	for _, name := range []string{MetaFile, "model.tflite"} {
		b, err := os.ReadFile(filepath.Join(tiny, name))
		if err != nil {
			f.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, name), b, 0o644)
	}
	key := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	s, err := Sign(dir, key)
	if err != nil {
		f.Fatal(err)
	}
	good, _ := os.ReadFile(filepath.Join(dir, SignatureFile))
	pub := []byte(base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey)) + " seed\n")
	f.Add(good, pub)
	f.Add([]byte("{}"), []byte("# none\n"))
	f.Add([]byte(`{"format_version":1,"key_id":"`+s.KeyID+`","files":{"model.json":"00"},"signature":""}`), pub)
	f.Add([]byte(`{"format_version":1,"key_id":"0000000000000000","files":{"../x":"`+strings.Repeat("0", 64)+`"},"signature":"AA=="}`), []byte("AAAA\n"))
	f.Fuzz(func(t *testing.T, sig, pubkeys []byte) {
		if s, err := ParseSignature(sig); err == nil {
			for name := range s.Files {
				if strings.ContainsAny(name, `/\`) || name == SignatureFile {
					t.Fatalf("ParseSignature accepted file name %q", name)
				}
			}
		}
		keys, err := ParsePublicKeys(pubkeys)
		if err != nil {
			return
		}
		os.WriteFile(filepath.Join(dir, SignatureFile), sig, 0o644)
		if _, err := LoadSigned(dir, keys); err == nil && !bytes.Equal(sig, good) {
			t.Fatalf("LoadSigned accepted a signature.json that was not made with the key: %q", sig)
		}
	})
}
