package daemon

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/doctor"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/vmm"
)

// capDriver is a driver that only has capabilities: enough for the
// daemon's choices and for runSteps, which stops a hung VMM.
type capDriver struct {
	vmm.Base
	name   string
	info   vmm.Info
	checks []doctor.Check
	stops  int
}

func (c *capDriver) Name() string           { return c.name }
func (c *capDriver) Info() vmm.Info         { return c.info }
func (c *capDriver) Alive(vmm.Process) bool { return false }
func (c *capDriver) Start(context.Context, vmm.Spec) (vmm.Process, error) {
	return vmm.Process{}, errors.New("capDriver starts nothing")
}
func (c *capDriver) Stop(context.Context, string, vmm.Process, bool, time.Duration) error {
	c.stops++
	return nil
}
func (c *capDriver) DialAgent(context.Context, string) (net.Conn, error) {
	return nil, errors.New("no agent")
}
func (c *capDriver) HostChecks(context.Context, system.Runner, vmm.Need) []doctor.Check {
	return c.checks
}

// stageRecorder is a stageFunc that records the stages run.
type stageRecorder struct{ names []string }

func (s *stageRecorder) stage(name string, fn func(ctx context.Context) error) error {
	s.names = append(s.names, name)
	return fn(context.Background())
}

// A step failing with ErrEarlyHang sends the run back to the seed step
// once, announced as boot-retry, after stopping the hung VMM; a second
// hang, or any other failure, ends the run.
func TestRunStepsRetriesAnEarlyHangOnce(t *testing.T) {
	ctx := context.Background()
	d := testDaemon(t, nil)
	drv := &capDriver{name: "qemu"}
	d.drivers = map[string]vmm.Driver{"qemu": drv}
	dir := t.TempDir()
	hang := earlyHang(dir, errors.New("guest agent did not answer within 3m0s"))
	run := func(agentErrs ...error) ([]string, error) {
		rec := &stageRecorder{}
		n := 0
		steps := []step{
			{name: "prepare", fn: func(context.Context, *vmRun) error { return nil }},
			{name: "network", skip: func(*vmRun) bool { return true }, fn: func(context.Context, *vmRun) error { t.Fatal("skipped step ran"); return nil }},
			{name: stageSeed, fn: func(context.Context, *vmRun) error { return nil }},
			{name: "boot", fn: func(context.Context, *vmRun) error { return nil }},
			{name: "agent", fn: func(context.Context, *vmRun) error {
				n++
				if n <= len(agentErrs) {
					return agentErrs[n-1]
				}
				return nil
			}},
			{name: "services", fn: func(context.Context, *vmRun) error { return nil }},
		}
		err := d.runSteps(ctx, rec.stage, &vmRun{vm: &store.VM{Name: "v", Dir: dir, VMM: "qemu"}}, steps)
		return rec.names, err
	}
	names, err := run(hang)
	if err != nil || strings.Join(names, " ") != "prepare seed boot agent boot-retry seed boot agent services" || drv.stops != 1 {
		t.Fatalf("one hang: %v %v, %d stops", names, err, drv.stops)
	}
	names, err = run(hang, hang)
	if !errors.Is(err, vmm.ErrEarlyHang) || strings.Join(names, " ") != "prepare seed boot agent boot-retry seed boot agent" {
		t.Fatalf("two hangs: %v %v", names, err)
	}
	names, err = run(errors.New("the VM exited during boot"))
	if err == nil || strings.Join(names, " ") != "prepare seed boot agent" {
		t.Fatalf("a failure that is no hang: %v %v", names, err)
	}
}

// A quiet console makes an agent timeout an early hang; a console with
// systemd at work makes it a failed boot. The message stays the same,
// and the console tail keeps the sentinel.
func TestEarlyHang(t *testing.T) {
	d := testDaemon(t, nil)
	dir := t.TempDir()
	timeout := errors.New("guest agent did not answer within 3m0s")
	os.WriteFile(filepath.Join(dir, paths.FileConsoleLog), []byte("[    0.000000] Linux version 6.1\n"), 0o600)
	err := d.withConsole(dir, earlyHang(dir, timeout))
	if !errors.Is(err, vmm.ErrEarlyHang) || !errors.Is(err, timeout) || err.Error() != timeout.Error() {
		t.Fatalf("quiet console: %v", err)
	}
	os.WriteFile(filepath.Join(dir, paths.FileConsoleLog), []byte("[    2.1] systemd[1]: Started Journal Service.\n"), 0o600)
	if err := earlyHang(dir, timeout); errors.Is(err, vmm.ErrEarlyHang) {
		t.Fatalf("systemd on the console counted as a hang: %v", err)
	}
}

// The create list: stage names the CLI prints, in order.
func TestCreateSteps(t *testing.T) {
	d := testDaemon(t, nil)
	var names []string
	for _, s := range d.createSteps() {
		names = append(names, s.name)
	}
	if got := strings.Join(names, " "); got != "prepare disks network seed boot agent services" {
		t.Fatalf("create steps %q", got)
	}
}

// --vmm auto and explicit choices follow the drivers' capabilities, not
// their names.
func TestVMMChoiceByCapabilities(t *testing.T) {
	ctx := context.Background()
	d := testDaemon(t, nil)
	emu := &capDriver{name: "emu", info: vmm.Info{Title: "Emu", Emulates: true, UserNet: true}}
	fast := &capDriver{name: "fast", info: vmm.Info{Title: "Fast", Jailer: true, Preferred: true},
		checks: []doctor.Check{{Name: "fast", Status: doctor.OK}}}
	d.drivers = map[string]vmm.Driver{"emu": emu, "fast": fast}
	d.accel = accelChoice{Accel: "kvm", Probed: true}
	pick := func(req api.CreateVMRequest) (string, error) {
		req.VMM = "auto"
		err := d.resolveVMM(ctx, &req, store.Image{})
		return req.VMM, err
	}
	for _, c := range []struct {
		net, accel string
		fastOK     bool
		want       string
	}{
		{"user", "kvm", true, "emu"},
		{"tap", "kvm", true, "fast"},
		{"tap", "tcg", true, "emu"},
		{"tap", "kvm", false, "emu"},
	} {
		d.accel.Accel = c.accel
		fast.checks[0].Status = doctor.OK
		if !c.fastOK {
			fast.checks[0].Status = doctor.Fail
		}
		if got, err := pick(api.CreateVMRequest{Net: c.net}); err != nil || got != c.want {
			t.Errorf("%+v: got %q %v", c, got, err)
		}
	}
	fast.checks[0].Status = doctor.OK
	if got, err := pick(api.CreateVMRequest{Net: "tap", Jailer: true}); err != nil || got != "fast" {
		t.Errorf("auto --jailer: %q %v", got, err)
	}
	for _, c := range []struct {
		req        api.CreateVMRequest
		want, hint string
	}{
		{api.CreateVMRequest{VMM: "fast"}, "Fast needs --net tap: it has no user-mode networking", "create it with --vmm fast --net tap, or use --vmm emu"},
		{api.CreateVMRequest{VMM: "emu", Jailer: true}, "--jailer is a Fast option; this VM would run under Emu", "drop --jailer, or use --vmm fast"},
		{api.CreateVMRequest{VMM: "kvmtool"}, `unknown VMM "kvmtool"`, "use --vmm emu or --vmm fast"},
	} {
		req := c.req
		err := d.resolveVMM(ctx, &req, store.Image{})
		if err == nil || err.Error() != c.want || hintOf(err) != c.hint {
			t.Errorf("%+v: %v (hint %q)", c.req, err, hintOf(err))
		}
	}
	fast.checks[0] = doctor.Check{Name: "fast", Status: doctor.Fail, Detail: "fast not found", Fix: "install fast"}
	req := api.CreateVMRequest{VMM: "fast", Net: "tap"}
	if err := d.resolveVMM(ctx, &req, store.Image{}); err == nil || err.Error() != "cannot run Fast here: fast not found" || hintOf(err) != "install fast" {
		t.Errorf("failing host check: %v", err)
	}
	if c := d.defaultVMMCheck(ctx, true); c.Detail != "auto: emu (fast not installed)" {
		t.Errorf("doctor: %q", c.Detail)
	}
}
