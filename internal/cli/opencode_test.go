package cli

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/bangerdev/banger/api"
)

const testOpencodePassword = "s3cretPASSWORDs3cretPASSWORD"

func opencodeVM() api.VM {
	return api.VM{Name: "dev", State: api.VMRunning, Ports: []api.Port{{HostPort: 40961, GuestPort: 4096}},
		Opencode: &api.Opencode{URL: "http://127.0.0.1:40961", Username: "opencode", Password: testOpencodePassword}}
}

// The next step opens opencode in the repository (not /root) and takes
// the password from the daemon when it runs, so the printed text never
// holds it.
func TestNextStepsOpencodeAttach(t *testing.T) {
	vm := opencodeVM()
	want := "OPENCODE_SERVER_PASSWORD=$(banger vm opencode-password dev) opencode attach http://127.0.0.1:40961 --dir /root/repo"
	var found bool
	for _, s := range nextSteps(vm) {
		if strings.Contains(s.Command+s.What, testOpencodePassword) {
			t.Fatalf("next step shows the password: %+v", s)
		}
		if strings.Contains(s.Command, "opencode attach") {
			if s.Command != want {
				t.Fatalf("attach step %q, want %q", s.Command, want)
			}
			found = true
		}
	}
	if !found {
		t.Fatal("no opencode attach step")
	}
	vm.Workspace = &api.Workspace{Dir: "/root/my repo"}
	if got := opencodeAttachCommand(vm); !strings.HasSuffix(got, " --dir '/root/my repo'") {
		t.Fatalf("workspace dir not quoted: %q", got)
	}
	// Tap mode: the guest's own address.
	vm.Opencode.URL = "http://172.30.0.5:4096"
	if got := opencodeAttachCommand(vm); !strings.Contains(got, "opencode attach http://172.30.0.5:4096 --dir") {
		t.Fatalf("tap attach %q", got)
	}
	// An image without opencode: no step, even with a 4096 forward.
	vm.Opencode = nil
	for _, s := range nextSteps(vm) {
		if strings.Contains(s.Command, "opencode") {
			t.Fatalf("opencode step for an image without it: %+v", s)
		}
	}
}

func TestShowOpencodeWithoutPassword(t *testing.T) {
	var out bytes.Buffer
	g := &globals{stdout: &out}
	g.printVM(opencodeVM())
	s := out.String()
	if strings.Contains(s, testOpencodePassword) {
		t.Fatalf("vm show text prints the password:\n%s", s)
	}
	for _, want := range []string{"opencode:", "http://127.0.0.1:40961 (user opencode, password from `banger vm opencode-password dev`)",
		"opencode attach http://127.0.0.1:40961 --dir /root/repo"} {
		if !strings.Contains(s, want) {
			t.Fatalf("vm show lacks %q:\n%s", want, s)
		}
	}
}

func TestOpencodePassword(t *testing.T) {
	if pw, err := opencodePassword(opencodeVM()); err != nil || pw != testOpencodePassword {
		t.Fatalf("%q %v", pw, err)
	}
	if _, err := opencodePassword(api.VM{Name: "dev"}); err == nil || !strings.Contains(err.Error(), "serves no opencode") {
		t.Fatalf("no opencode: %v", err)
	}
	vm := opencodeVM()
	vm.Opencode.Password = ""
	if _, err := opencodePassword(vm); err == nil || !strings.Contains(err.Error(), "has not booted") {
		t.Fatalf("no password yet: %v", err)
	}
	if code, _, stderr := run(t, "vm", "opencode-password"); code != ExitUsage || !strings.Contains(stderr, "accepts 1 arg") {
		t.Fatalf("no name: %d %q", code, stderr)
	}
}

// A stopped VM's forwarded port is free: another local user can listen
// on it and collect the password from an `opencode attach`. So the
// password and the attach line are for running VMs only.
func TestOpencodePasswordOnlyWhileRunning(t *testing.T) {
	vm := opencodeVM()
	vm.State = api.VMStopped
	_, err := opencodePassword(vm)
	var ae *api.Error
	if err == nil || !errors.As(err, &ae) || !strings.Contains(ae.Message, "not running") || !strings.Contains(ae.Hint, "banger vm start dev") {
		t.Fatalf("password of a stopped VM: %v", err)
	}
	var out bytes.Buffer
	g := &globals{stdout: &out}
	g.printVM(vm)
	if s := out.String(); strings.Contains(s, "opencode attach") || strings.Contains(s, testOpencodePassword) || !strings.Contains(s, "start it first") {
		t.Fatalf("vm show of a stopped VM offers the attach line:\n%s", s)
	}
}
