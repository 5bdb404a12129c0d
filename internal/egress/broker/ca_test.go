package broker

import (
	"bytes"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCACreatedPrivateAndReloaded(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "egress-ca")
	ca, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(dir)
	if st.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %o", st.Mode().Perm())
	}
	for _, f := range []string{FileCAKey, FileCACert} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v mode %o", f, err, st.Mode().Perm())
		}
	}
	c := ca.Certificate()
	if c.Subject.CommonName != "banger egress CA" || !c.IsCA || c.NotAfter.Before(time.Now().Add(9*365*24*time.Hour)) {
		t.Fatalf("CA cert %v %v %v", c.Subject, c.IsCA, c.NotAfter)
	}
	again, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again.CertPEM(), ca.CertPEM()) {
		t.Fatal("reload made a new CA")
	}
	leaf, err := again.Leaf("api.anthropic.com")
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM())
	if _, err := leaf.Leaf.Verify(x509.VerifyOptions{DNSName: "api.anthropic.com", Roots: pool}); err != nil {
		t.Fatalf("leaf does not verify: %v", err)
	}
	if leaf.Leaf.NotAfter.After(time.Now().Add(8 * 24 * time.Hour)) {
		t.Fatal("leaf lives too long")
	}
	if l2, _ := again.Leaf("api.anthropic.com"); l2 != leaf {
		t.Fatal("leaf not cached")
	}
	// Renewed once close to its end.
	again.now = func() time.Time { return time.Now().Add(6*24*time.Hour + time.Hour) }
	if l3, _ := again.Leaf("api.anthropic.com"); l3 == leaf {
		t.Fatal("leaf not renewed")
	}
}

func TestCARefusesSymlinks(t *testing.T) {
	base := t.TempDir()
	real := filepath.Join(base, "real")
	if _, err := LoadOrCreateCA(real); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(base, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateCA(link); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Fatalf("symlinked dir: %v", err)
	}
	dir := filepath.Join(base, "d")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(real, FileCAKey), filepath.Join(dir, FileCAKey)); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(real, FileCACert), filepath.Join(dir, FileCACert)); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateCA(dir); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Fatalf("symlinked key: %v", err)
	}
	half := filepath.Join(base, "half")
	_ = os.Mkdir(half, 0o700)
	_ = os.WriteFile(filepath.Join(half, FileCACert), []byte("x"), 0o600)
	if _, err := LoadOrCreateCA(half); err == nil {
		t.Fatal("half a CA accepted")
	}
}
