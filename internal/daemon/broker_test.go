package daemon

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/egress/broker"
	"github.com/bangerdev/banger/internal/store"
)

func TestAuthSeedModes(t *testing.T) {
	var log bytes.Buffer
	d := testDaemon(t, &log)
	home := t.TempDir()
	d.cfg.Auth.Home = home
	const secret = "sk-ant-api03-SECRETdonotlog"
	const envSecret = "sk-ant-api03-ENVSECRETdonotlog"
	t.Setenv("BANGER_TEST_ANTHROPIC_KEY", envSecret)
	os.WriteFile(filepath.Join(home, ".claude.json"), []byte(`{"numStartups":3,"primaryApiKey":"`+secret+`"}`), 0o600)
	os.MkdirAll(filepath.Join(home, ".claude"), 0o700)
	os.WriteFile(filepath.Join(home, ".claude/.credentials.json"), []byte(`not json `+secret), 0o600)

	cb, err := newCredentialBroker(t.TempDir(), nil, slog.New(slog.NewTextHandler(&log, nil)))
	if err != nil {
		t.Fatal(err)
	}
	vm := &store.VM{ID: "id1", Name: "dev", Dir: t.TempDir()}
	envNames := []string{"BANGER_TEST_ANTHROPIC_KEY", "BANGER_TEST_UNSET"}

	s, err := d.authSeed(cb, vm, config.CredentialsBroker, envNames)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Files) != 1 || s.Files[0].Path != ".claude.json" || strings.Contains(string(s.Files[0].Data), secret) {
		t.Fatalf("broker files %v", s.Synced)
	}
	if s.CACert == "" || !strings.HasPrefix(s.Env["BANGER_TEST_ANTHROPIC_KEY"], "sk-ant-api03-"+broker.Marker) {
		t.Fatalf("broker seed: ca %d bytes, env %v", len(s.CACert), s.Env)
	}
	want := []string{".claude.json#primaryApiKey", "env:BANGER_TEST_ANTHROPIC_KEY"}
	if !reflect.DeepEqual(s.Brokered, want) || !reflect.DeepEqual(brokeredCredentials(vm.Dir), want) {
		t.Fatalf("brokered %v / %v", s.Brokered, brokeredCredentials(vm.Dir))
	}
	if !cb.Interceptor().Intercepts(brokerRef(vm), "api.anthropic.com", 443) {
		t.Fatal("VM not registered with the broker")
	}
	if !strings.Contains(log.String(), ".claude/.credentials.json") {
		t.Fatalf("no warning naming the unparsable file:\n%s", log.String())
	}
	// A reboot reseeds the same placeholders; a daemon restart restores them.
	again, _ := d.authSeed(cb, vm, config.CredentialsBroker, envNames)
	if !reflect.DeepEqual(again.Env, s.Env) || !bytes.Equal(again.Files[0].Data, s.Files[0].Data) {
		t.Fatal("placeholders changed across reseeds")
	}
	cb2, _ := newCredentialBroker(t.TempDir(), nil, slog.New(slog.NewTextHandler(&log, nil)))
	cb2.restoreVM(brokerRef(vm), vm.Dir)
	if !cb2.Interceptor().Intercepts(brokerRef(vm), "api.anthropic.com", 443) {
		t.Fatal("restoreVM did not register the VM")
	}

	c, err := d.authSeed(cb, vm, config.CredentialsCopy, envNames)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Files) != 2 || c.Env["BANGER_TEST_ANTHROPIC_KEY"] != envSecret || c.CACert != "" {
		t.Fatalf("copy seed %v", c.Synced)
	}
	if cb.Interceptor().Intercepts(brokerRef(vm), "api.anthropic.com", 443) || brokeredCredentials(vm.Dir) != nil {
		t.Fatal("copy mode left the VM brokered")
	}
	n, err := d.authSeed(cb, vm, config.CredentialsNone, envNames)
	if err != nil || n.Files != nil || n.Env != nil {
		t.Fatalf("none seed %+v %v", n, err)
	}
	if n, _ := d.authSeed(nil, vm, config.CredentialsBroker, envNames); n.Files != nil || n.Env != nil {
		t.Fatal("broker mode without a broker must give nothing")
	}
	if strings.Contains(log.String(), secret) || strings.Contains(log.String(), envSecret) {
		t.Fatalf("secret in log:\n%s", log.String())
	}
}
