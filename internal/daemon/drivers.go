package daemon

// The VMM drivers this daemon offers. This file is the only one in the
// daemon that knows the drivers by their packages; everything else asks
// a vmm.Driver (driverFor) and reads its vmm.Info.

import (
	"os"
	"path/filepath"
	"sort"

	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/vmm"
	"github.com/bangerdev/banger/internal/vmm/firecracker"
	"github.com/bangerdev/banger/internal/vmm/qemu"
)

// newDrivers builds the VMM drivers a daemon offers, by store.VM.VMM name.
func newDrivers(cfg config.Config) map[string]vmm.Driver {
	fc := cfg.Firecracker
	return map[string]vmm.Driver{
		config.VMMQEMU: &qemu.Driver{},
		config.VMMFirecracker: &firecracker.Driver{
			Binary: fc.Binary,
			Jailer: firecracker.JailerConfig{
				Binary: fc.JailerBinary, UID: fc.UID, GID: fc.GID,
				ChrootBase: fc.ChrootBase, ParentCgroup: fc.ParentCgroup, Cgroups: fc.Cgroups,
				CgroupVersion: fc.CgroupVersion,
			},
			JailAll: fc.Jailer,
		},
	}
}

// isFallback says whether drv runs any VM: it emulates where KVM fails
// and has user networking. `--vmm auto` falls back to it.
func isFallback(drv vmm.Driver) bool {
	info := drv.Info()
	return info.Emulates && info.UserNet
}

// driverList is the drivers in a stable order: those that run any VM
// first, then by name. Messages, doctor checks and the KVM probe follow it.
func (d *Daemon) driverList() []vmm.Driver {
	list := make([]vmm.Driver, 0, len(d.drivers))
	for _, drv := range d.drivers {
		list = append(list, drv)
	}
	sort.Slice(list, func(i, j int) bool {
		if fi, fj := isFallback(list[i]), isFallback(list[j]); fi != fj {
			return fi
		}
		return list[i].Name() < list[j].Name()
	})
	return list
}

// fallbackDriver is the driver `--vmm auto` picks when no preferred one
// can run a VM (QEMU).
func (d *Daemon) fallbackDriver() vmm.Driver {
	list := d.driverList()
	if len(list) == 0 {
		return nil
	}
	return list[0]
}

// preferredDrivers are those `--vmm auto` tries first (vmm.Info.Preferred).
func (d *Daemon) preferredDrivers() []vmm.Driver {
	var out []vmm.Driver
	for _, drv := range d.driverList() {
		if drv.Info().Preferred {
			out = append(out, drv)
		}
	}
	return out
}

// jailerDriver is the first driver that can run under a jailer, or nil.
func (d *Daemon) jailerDriver() vmm.Driver {
	for _, drv := range d.driverList() {
		if drv.Info().Jailer {
			return drv
		}
	}
	return nil
}

// bootImage describes img's files to a driver; files the image lacks
// are left empty.
func bootImage(img store.Image) vmm.Image {
	opt := func(name string) string {
		p := filepath.Join(img.Dir, name)
		if _, err := os.Stat(p); err != nil {
			return ""
		}
		return p
	}
	return vmm.Image{
		Name:    img.Name,
		Kernel:  filepath.Join(img.Dir, image.FileKernel),
		Vmlinux: opt(image.FileVmlinux),
		Initrd:  opt(image.FileInitrd),
		Rootfs:  filepath.Join(img.Dir, image.FileRootfs),
	}
}

// driverFor returns the driver that runs vm. VMs recorded before the VMM
// was stored are QEMU's.
func (d *Daemon) driverFor(vm store.VM) vmm.Driver {
	if drv, ok := d.drivers[vm.VMM]; ok {
		return drv
	}
	return d.drivers[config.VMMQEMU]
}
