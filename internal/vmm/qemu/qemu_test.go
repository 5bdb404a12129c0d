package qemu

import (
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/vmm"
)

func TestArgs(t *testing.T) {
	spec := vmm.Spec{
		ID: "ab12cd34", ProcessName: "bg123456-ab12cd34", Dir: "/v/ab12cd34",
		Kernel: "/i/vmlinuz", Initrd: "/i/initrd.img", Cmdline: "console=ttyS0",
		Disks: []vmm.Disk{{Path: "/v/root.qcow2", Format: "qcow2"}, {Path: "/v/seed.ext4", Format: "raw", ReadOnly: true}},
		CPUs:  2, MemoryMiB: 1024, Accel: "tcg", Egress: "none",
		Forwards: []vmm.Forward{{HostPort: 40022, GuestPort: 22}},
	}
	got := strings.Join(Args(spec), " ")
	for _, want := range []string{
		"-M microvm,acpi=on -accel tcg -cpu max -smp 2 -m 1024",
		"-serial file:/v/ab12cd34/console.log",
		"-qmp unix:/v/ab12cd34/qmp.sock,server=on,wait=off",
		"-drive id=d0,file=/v/root.qcow2,format=qcow2,if=none,discard=unmap -device virtio-blk-device,drive=d0",
		"file=/v/seed.ext4,format=raw,if=none,discard=unmap,readonly=on",
		"-chardev socket,path=/v/ab12cd34/agent.sock,server=on,wait=off,id=agent",
		"-device virtserialport,chardev=agent,name=banger.agent",
		"-netdev user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22",
		"-name bg123456-ab12cd34,process=bg123456-ab12cd34",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("args lack %q:\n%s", want, got)
		}
	}
	spec.ExtraSerialPorts = []string{"bench"}
	if got := strings.Join(Args(spec), " "); !strings.Contains(got, "-chardev socket,path=/v/ab12cd34/port-bench.sock,server=on,wait=off,id=xport0 -device virtserialport,chardev=xport0,name=bench") {
		t.Errorf("extra serial port args wrong:\n%s", got)
	}
	spec.ExtraSerialPorts = nil
	spec.Accel, spec.Egress = "kvm", "all"
	got = strings.Join(Args(spec), " ")
	if !strings.Contains(got, "-accel kvm -cpu host") || strings.Contains(got, "restrict=on") {
		t.Errorf("kvm/egress all args wrong:\n%s", got)
	}
}

func TestParseCPUkHz(t *testing.T) {
	for in, want := range map[string]int{
		"processor\t: 0\ncpu MHz\t\t: 2100.000\n": 2100000,
		"cpu MHz : 3392.412\ncpu MHz : 1.0\n":     3392412,
		"nothing here":                            2000000,
		"cpu MHz : garbage":                       2000000,
	} {
		if got := parseCPUkHz(in); got != want {
			t.Errorf("%q: got %d want %d", in, got, want)
		}
	}
}

func TestArgsTap(t *testing.T) {
	spec := vmm.Spec{
		ID: "ab12cd34", Dir: "/v/ab12cd34", Kernel: "/i/vmlinuz", CPUs: 1, MemoryMiB: 512, Accel: "tcg", Egress: "none",
		// Forwards are meaningless in tap mode and must not leak into args.
		Forwards: []vmm.Forward{{HostPort: 40022, GuestPort: 22}},
		Net:      vmm.Net{Mode: vmm.NetTap, TapDevice: "bg123456tab12cd", MAC: "0a:b6:ab:12:cd:34"},
	}
	got := strings.Join(Args(spec), " ")
	want := "-netdev tap,id=n0,ifname=bg123456tab12cd,script=no,downscript=no -device virtio-net-device,netdev=n0,mac=0a:b6:ab:12:cd:34"
	if !strings.Contains(got, want) {
		t.Errorf("args lack %q:\n%s", want, got)
	}
	for _, bad := range []string{"hostfwd", "user,", "restrict"} {
		if strings.Contains(got, bad) {
			t.Errorf("tap args contain %q:\n%s", bad, got)
		}
	}
}
