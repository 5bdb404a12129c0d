package daemon

// The daemon's engines as the HTTP layer sees them. This file is the only
// one that knows internal/daemon/httpapi: it hands the engines to the
// handler, and the engines never call back into it. The VM and image
// adapters below turn engine records into public views; the session and
// operations engines implement their interfaces themselves.

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/buildinfo"
	"github.com/bangerdev/banger/internal/daemon/httpapi"
	"github.com/bangerdev/banger/internal/doctor"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/sshkeys"
	"github.com/bangerdev/banger/internal/store"
)

// routes is the daemon's HTTP handler.
func (d *Daemon) routes() http.Handler {
	sessions := d.sessionEngine()
	return httpapi.New(httpapi.Backend{
		System:     systemAPI{d},
		VMs:        vmAPI{d},
		Workspaces: d,
		Images:     imageAPI{d.imageEngine()},
		Sessions:   sessions,
		Events:     sessions,
		Operations: d.ops,
		Egress:     egressAPI{d},
		Snapshots:  snapshotAPI{d},
		Log:        d.log,
	})
}

type systemAPI struct{ d *Daemon }

func (s systemAPI) Version() api.VersionInfo {
	acc := s.d.currentAccel()
	return api.VersionInfo{Version: buildinfo.Version, Commit: buildinfo.Commit, PID: os.Getpid(), Home: s.d.layout.DataDir, Accel: acc.Accel, AccelNote: acc.Note}
}

func (s systemAPI) Doctor(ctx context.Context) []doctor.Check { return s.d.Doctor(ctx) }

// vmAPI is the VM engine with public views.
type vmAPI struct{ d *Daemon }

func (v vmAPI) ListVMs(ctx context.Context) ([]api.VM, error) {
	vms, err := v.d.store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.VM, 0, len(vms))
	for _, vm := range vms {
		out = append(out, v.d.vmView(ctx, vm))
	}
	return out, nil
}

func (v vmAPI) GetVM(ctx context.Context, name string) (api.VM, error) {
	vm, err := v.d.getVM(ctx, name)
	if err != nil {
		return api.VM{}, err
	}
	out := v.d.vmView(ctx, vm)
	v.d.withOpencodePassword(&out, vm)
	return out, nil
}

func (v vmAPI) CreateVM(ctx context.Context, req api.CreateVMRequest) (string, error) {
	return v.d.CreateVM(ctx, req)
}

func (v vmAPI) DeleteVM(ctx context.Context, name string, force bool) error {
	return v.d.DeleteVM(ctx, name, force)
}

func (v vmAPI) StartVM(ctx context.Context, name string, req api.StartVMRequest) (api.VM, error) {
	return v.view(ctx)(v.d.StartVM(ctx, name, req))
}

func (v vmAPI) RestartVM(ctx context.Context, name string) (api.VM, error) {
	return v.view(ctx)(v.d.RestartVM(ctx, name))
}

func (v vmAPI) StopVM(ctx context.Context, name string, force bool) (api.VM, error) {
	return v.view(ctx)(v.d.StopVM(ctx, name, force))
}

// view turns a lifecycle call's answer into the public view.
func (v vmAPI) view(ctx context.Context) func(store.VM, error) (api.VM, error) {
	return func(vm store.VM, err error) (api.VM, error) {
		if err != nil {
			return api.VM{}, err
		}
		return v.d.vmView(ctx, vm), nil
	}
}

// Health reports the VMM process and asks the agent (10 s at most).
func (v vmAPI) Health(ctx context.Context, name string) (api.Health, error) {
	d := v.d
	vm, err := d.getVM(ctx, name)
	if err != nil {
		return api.Health{}, err
	}
	h := api.Health{VM: vm.Name, State: vm.State, VMM: d.driverFor(vm).Name(), VMMAlive: d.driverFor(vm).Alive(d.proc(vm))}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if c, err := d.agent(ctx, vm); err != nil {
		h.AgentErr = err.Error()
	} else if ah, err := c.Health(ctx); err != nil {
		h.AgentErr = err.Error()
	} else {
		h.Agent = &ah
	}
	return h, nil
}

// SSH is how to reach a running VM's sshd.
func (v vmAPI) SSH(ctx context.Context, name string) (api.SSHInfo, error) {
	d := v.d
	vm, err := d.useVM(ctx, name)
	if err != nil {
		return api.SSHInfo{}, err
	}
	if vm.State != api.VMRunning {
		return api.SSHInfo{}, api.Errorf(api.CodeConflict, fmt.Sprintf("start it with `banger vm start %s`", vm.Name), "VM %q is %s", vm.Name, vm.State)
	}
	key, _, err := sshkeys.EnsureClientKey(d.layout.SSHDir)
	if err != nil {
		return api.SSHInfo{}, err
	}
	host, port := "127.0.0.1", vm.SSHPort
	if isTap(vm) {
		l, err := d.store.LeaseForVM(ctx, vm.ID)
		if err != nil {
			return api.SSHInfo{}, fmt.Errorf("lease of %s: %w", vm.Name, err)
		}
		host, port = l.Addr.Addr().String(), guestSSHPort
	}
	return api.SSHInfo{
		Host: host, Port: port, User: "root", IdentityFile: key,
		KnownHostsFile: filepath.Join(vm.Dir, paths.FileKnownHosts), HostKeyAlias: hostKeyAlias(vm.Name),
	}, nil
}

func (v vmAPI) ConsoleLog(ctx context.Context, name string, follow bool) (io.ReadCloser, error) {
	return v.d.ConsoleLog(ctx, name, follow)
}

// Exec starts req in the guest through its agent.
func (v vmAPI) Exec(ctx context.Context, name string, req api.ExecRequest) (net.Conn, error) {
	if len(req.Argv) == 0 {
		return nil, api.Errorf(api.CodeInvalid, "pass a command after --", "empty command")
	}
	vm, err := v.d.useVM(ctx, name)
	if err != nil {
		return nil, err
	}
	c, err := v.d.agent(ctx, vm)
	if err != nil {
		return nil, err
	}
	guest, err := c.Exec(ctx, req)
	if err != nil {
		return nil, asAPIError(err)
	}
	return v.d.act.hold(vm.ID, guest), nil
}

// imageAPI is the image engine with public views.
type imageAPI struct{ e *imageEngine }

func (i imageAPI) ListImages(ctx context.Context) ([]api.Image, error) {
	imgs, err := i.e.store.ListImages(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.Image, 0, len(imgs))
	for _, img := range imgs {
		out = append(out, i.e.imageView(ctx, img, false))
	}
	return out, nil
}

func (i imageAPI) GetImage(ctx context.Context, name string) (api.Image, error) {
	img, err := i.e.getImage(ctx, name)
	if err != nil {
		return api.Image{}, err
	}
	return i.e.imageView(ctx, img, true), nil
}

func (i imageAPI) BuildImage(ctx context.Context, req api.BuildImageRequest) (string, error) {
	return i.e.BuildImage(ctx, req)
}

func (i imageAPI) DeleteImage(ctx context.Context, name string) error {
	return i.e.DeleteImage(ctx, name)
}

func (i imageAPI) ExportImage(ctx context.Context, name, dir string) error {
	return i.e.ExportImage(ctx, name, dir)
}

func (i imageAPI) ImportImage(ctx context.Context, path string) (api.Image, error) {
	return i.view(ctx)(i.e.ImportImage(ctx, path))
}

func (i imageAPI) VerifyImage(ctx context.Context, name string) (string, error) {
	return i.e.VerifyImage(ctx, name)
}

func (i imageAPI) PromoteImage(ctx context.Context, name string) (api.Image, error) {
	return i.view(ctx)(i.e.PromoteImage(ctx, name))
}

func (i imageAPI) RegisterImage(ctx context.Context, req api.RegisterImageRequest) (api.Image, error) {
	return i.view(ctx)(i.e.RegisterImage(ctx, req))
}

// view turns an image call's answer into the public view.
func (i imageAPI) view(ctx context.Context) func(store.Image, error) (api.Image, error) {
	return func(img store.Image, err error) (api.Image, error) {
		if err != nil {
			return api.Image{}, err
		}
		return i.e.imageView(ctx, img, false), nil
	}
}
