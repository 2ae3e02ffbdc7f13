package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"gnld/models"
)

// Signed bundles (models/signature.go): keygen makes a key pair, sign
// signs bundle folders with the private key, verify checks bundles
// against trusted public keys exactly as gnld does with GNLD_MODEL_PUBKEYS.

// keygen writes NAME.key (the private key's seed, base64, mode 0600) and
// NAME.pub (the public key, base64, and NAME as a comment).
func keygen(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("keygen", stderr)
	out := fs.String("out", "", "NAME: writes NAME.key (keep it secret, off the devices) and NAME.pub (for GNLD_MODEL_PUBKEYS)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return usageError{"keygen needs --out NAME"}
	}
	for _, p := range []string{*out + ".key", *out + ".pub"} {
		if _, err := os.Stat(p); err == nil {
			return fmt.Errorf("%s exists; keygen does not overwrite a key (move it away first)", p)
		}
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	if err := os.WriteFile(*out+".key", []byte(base64.StdEncoding.EncodeToString(priv.Seed())+"\n"), 0o600); err != nil {
		return err
	}
	line := base64.StdEncoding.EncodeToString(pub) + " " + strings.ReplaceAll(*out, " ", "_") + "\n"
	if err := os.WriteFile(*out+".pub", []byte(line), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "keygen: %s.key (private; sign with it) and %s.pub (key %s; add its line to GNLD_MODEL_PUBKEYS' file)\n",
		*out, *out, models.KeyID(pub))
	return nil
}

// readPrivateKey reads a NAME.key written by keygen.
func readPrivateKey(path string) (ed25519.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	seed, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(data)))
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("%s: not a private key written by `gnlctl keygen` (base64 of a 32-byte Ed25519 seed)", path)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// sign writes BUNDLE/signature.json for each bundle given.
func sign(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("sign", stderr)
	keyPath := fs.String("key", "", "private key file from gnlctl keygen (NAME.key)")
	bundles, err := parse(fs, args)
	if err != nil {
		return err
	}
	if *keyPath == "" || len(bundles) == 0 {
		return usageError{"sign needs --key NAME.key and at least one bundle folder"}
	}
	priv, err := readPrivateKey(*keyPath)
	if err != nil {
		return err
	}
	for _, dir := range bundles {
		if _, err := models.Load(dir); err != nil { // sign only what gnld would load
			return fmt.Errorf("not signed: %w", err)
		}
		s, err := models.Sign(dir, priv)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "sign: %s: %d files signed with key %s\n", dir, len(s.Files), s.KeyID)
	}
	return nil
}

// verify checks each bundle as gnld does with GNLD_MODEL_PUBKEYS.
func verify(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("verify", stderr)
	keysPath := fs.String("pubkeys", "", "file of trusted public keys, as GNLD_MODEL_PUBKEYS")
	bundles, err := parse(fs, args)
	if err != nil {
		return err
	}
	if *keysPath == "" || len(bundles) == 0 {
		return usageError{"verify needs --pubkeys FILE and at least one bundle folder"}
	}
	keys, err := models.ReadPublicKeys(*keysPath)
	if err != nil {
		return err
	}
	var bad error
	for _, dir := range bundles {
		b, err := models.LoadSigned(dir, keys)
		if err != nil {
			fmt.Fprintf(stdout, "verify: %s: REFUSED: %v\n", dir, err)
			bad = errors.New("a bundle failed verification")
			continue
		}
		fmt.Fprintf(stdout, "verify: %s: ok, %s %s\n", dir, b.Meta.Name, b.Meta.Version)
	}
	return bad
}
