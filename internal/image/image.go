// Package image builds, verifies, exports and imports banger's VM images.
//
// An image is a directory holding a read-only ext4 rootfs, the kernel and
// initrd taken from inside that rootfs (so kernel, initrd and modules always
// match), an uncompressed ELF vmlinux for Firecracker, the skeleton of /root
// that seeds each VM's work disk, and a manifest of package versions.
// banger-agent is not part of an image: it is delivered to each VM on its
// seed disk, so a new banger build never invalidates an image.
package image

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"
)

// File names inside an image directory, declared once.
const (
	FileRootfs   = "rootfs.ext4"
	FileKernel   = "vmlinuz"
	FileInitrd   = "initrd.img"
	FileVmlinux  = "vmlinux"
	FileManifest = "manifest.json"
	FileMeta     = "image.json"
	DirWorkSeed  = "work-seed"
)

// Labels of the filesystems a VM boots with; the guest's fstab and the
// kernel command line refer to them, so disk order never matters.
const (
	LabelRoot = "bangerroot"
	LabelWork = "bangerwork"
	LabelSeed = "bangerseed"
)

// recipeVersion is bumped whenever the build steps change in a way the
// spec does not capture, so the fingerprint changes with them.
const recipeVersion = "3"

// agentRecipeVersion is recipeVersion for the agent steps (npm install,
// rebuild, services); bumping it leaves base images' fingerprints alone.
const agentRecipeVersion = "2"

var (
	// ErrNoImage means no image has been built or imported yet.
	ErrNoImage = errors.New("no image available")
	// ErrInvalid means an image directory is incomplete or corrupt.
	ErrInvalid = errors.New("invalid image")
)

//go:embed guest
var guestFiles embed.FS

// Spec names everything that goes into an image build. Two builds with the
// same Spec produce the same image, which is what Fingerprint relies on.
type Spec struct {
	Name           string   `json:"name"`
	Suite          string   `json:"suite"`
	Mirror         string   `json:"mirror"`
	SecurityMirror string   `json:"security_mirror"`
	Packages       []string `json:"packages"`
	// NPM packages ("name@version", pinned) installed into /usr/local
	// from the host; set for the agent image.
	NPM []string `json:"npm,omitempty"`
}

// BasePackages are installed into every image. The kernel is installed
// inside the rootfs so its modules live where the guest looks for them.
var BasePackages = []string{
	"systemd-sysv", "udev", "openssh-server", "iproute2", "git",
	"ca-certificates", "linux-image-cloud-amd64", "initramfs-tools",
}

// DefaultSpec is the default Debian image.
func DefaultSpec(suite, mirror, securityMirror string) Spec {
	return Spec{
		Name:           "debian-" + suite,
		Suite:          suite,
		Mirror:         mirror,
		SecurityMirror: securityMirror,
		Packages:       append([]string(nil), BasePackages...),
	}
}

// Fingerprint hashes the spec, the recipe version and the guest files baked
// into the image. banger-agent is deliberately not an input.
func (s Spec) Fingerprint() string {
	h := sha256.New()
	pkgs := append([]string(nil), s.Packages...)
	sort.Strings(pkgs)
	fmt.Fprintf(h, "recipe=%s\nsuite=%s\nmirror=%s\nsecurity=%s\npackages=%s\n",
		recipeVersion, s.Suite, s.Mirror, s.SecurityMirror, strings.Join(pkgs, ","))
	// Only images with npm packages hash these, so the base image's
	// fingerprint (and every cache keyed by it) stays what it was.
	if len(s.NPM) > 0 {
		npm := append([]string(nil), s.NPM...)
		sort.Strings(npm)
		fmt.Fprintf(h, "agent-recipe=%s\nnpm=%s\n", agentRecipeVersion, strings.Join(npm, ","))
		hashAgentFiles(h)
	}
	_ = fs.WalkDir(guestFiles, "guest", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := guestFiles.ReadFile(p)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "file=%s %d\n", p, len(b))
		h.Write(b)
		return nil
	})
	return hex.EncodeToString(h.Sum(nil))
}

// Sources renders the apt source lines mmdebstrap fetches from.
func (s Spec) Sources() []string {
	out := []string{
		fmt.Sprintf("deb %s %s main", s.Mirror, s.Suite),
		fmt.Sprintf("deb %s %s-updates main", s.Mirror, s.Suite),
	}
	if s.SecurityMirror != "" {
		out = append(out, fmt.Sprintf("deb %s %s-security main", s.SecurityMirror, s.Suite))
	}
	return out
}

// Meta describes an image directory; it is written as image.json so an
// exported image can be imported elsewhere without rebuilding.
type Meta struct {
	Name          string `json:"name"`
	Fingerprint   string `json:"fingerprint"`
	Suite         string `json:"suite"`
	KernelVersion string `json:"kernel_version"`
	SizeBytes     int64  `json:"size_bytes"`
	Spec          Spec   `json:"spec"`
	// Distro is "debian" (when empty) or "void"; From names the base of
	// a derived image.
	Distro string `json:"distro,omitempty"`
	From   string `json:"from,omitempty"`
}

// KernelCmdline is the guest kernel command line shared by every VMM. It
// must never carry secrets: /proc/cmdline is world-readable in the guest.
func KernelCmdline(extra ...string) string {
	args := []string{
		"console=ttyS0", "root=LABEL=" + LabelRoot, "rw", "panic=-1",
		"quiet", "systemd.show_status=0", "net.ifnames=0",
	}
	return strings.Join(append(args, extra...), " ")
}
