package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gnld/internal/testbroker"
	"gnld/internal/testfiles"
	"gnld/models"
)

// signedCopy copies bundle from into a new folder and signs it with priv.
func signedCopy(t *testing.T, from string, priv ed25519.PrivateKey) string {
	dir := testfiles.CopyDir(t, from)
	if priv != nil {
		if _, err := models.Sign(dir, priv); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// GNLD_MODEL_PUBKEYS: an unsigned bundle stops start-up with one clear
// error; once running, a reload to an unsigned bundle, to one signed by
// another key and to one changed after signing is refused in one line each
// while the signed model in service keeps serving; a signed one is taken.
func TestSignedBundlesOnly(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	_, stranger, _ := ed25519.GenerateKey(rand.Reader)
	keys := filepath.Join(t.TempDir(), "trusted.pub")
	os.WriteFile(keys, []byte("# line keys\n"+base64.StdEncoding.EncodeToString(pub)+" line\n"), 0o644)
	dir, _ := mtdSamples(t, 2, "good")
	signedA, signedB := signedCopy(t, tinyBundle, priv), signedCopy(t, tinyFloatBundle, priv)
	unsigned, foreign := signedCopy(t, tinyFloatBundle, nil), signedCopy(t, tinyFloatBundle, stranger)
	changed := signedCopy(t, tinyFloatBundle, priv)
	meta, _ := os.ReadFile(filepath.Join(changed, models.MetaFile))
	os.WriteFile(filepath.Join(changed, models.MetaFile), []byte(strings.Replace(string(meta), "{", "{\n", 1)), 0o644)

	b := testbroker.Start(t)
	env := baseEnv(t, b.URL(), map[string]string{
		"GNLD_CAMERAS": "a=dir:" + dir, "GNLD_MODEL_PUBKEYS": keys, "GNLD_MODEL_DIR": unsigned,
		"GNLD_CALIBRATION_DIR": filepath.Join(t.TempDir(), "none"),
	})
	err, _ := runGnld(t, context.Background(), env)
	if err == nil || !strings.Contains(err.Error(), "not signed") || !strings.Contains(err.Error(), "gnlctl sign") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("start-up with an unsigned bundle: %v; want one line saying it is not signed and how to sign it", err)
	}

	link := newPointer(t, signedA)
	sub := testbroker.Subscribe(t, b, "gnl/#")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	env["GNLD_MODEL_DIR"], env["GNLD_CAMERA_A_LOOP"], env["GNLD_CAMERA_A_FPS"], env["GNLD_LOG_LEVEL"] = string(link), "true", "20", "info"
	log, wait := startGnld(t, ctx, env)
	vA, vB := version(t, signedA), version(t, signedB)
	sub.WaitFor(t, 30*time.Second, "results of the signed bundle", func([]testbroker.Msg) bool { return countVersion(results(t, sub, "a"), vA) >= 2 })
	for i, bad := range []struct{ dir, want string }{
		{unsigned, "not signed"}, {foreign, "not among the 1 trusted keys"}, {changed, "model.json is not the file that was signed"},
	} {
		link.point(t, bad.dir)
		sighup(t)
		waitLog(t, log, "model: reload refused", i+1)
		line := lastLine(log.String(), "model: reload refused")
		if !strings.Contains(line, bad.want) || !strings.Contains(line, "serving="+vA) {
			t.Errorf("refusal %d: %q; want it to name %q and the model still serving", i+1, line, bad.want)
		}
	}
	n := countVersion(results(t, sub, "a"), vA)
	sub.WaitFor(t, 30*time.Second, "the signed model still serving", func([]testbroker.Msg) bool { return countVersion(results(t, sub, "a"), vA) >= n+2 })
	link.point(t, signedB)
	sighup(t)
	sub.WaitFor(t, 30*time.Second, "the second signed bundle taken", func([]testbroker.Msg) bool { return countVersion(results(t, sub, "a"), vB) >= 2 })
	cancel()
	if err := wait(); err != nil {
		t.Fatal(err)
	}
}

// lastLine is the last line of text containing s.
func lastLine(text, s string) string {
	lines := strings.Split(text, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], s) {
			return lines[i]
		}
	}
	return ""
}
