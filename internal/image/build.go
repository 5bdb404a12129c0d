package image

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/bangerdev/banger/internal/system"
)

// StageFunc runs one named step of a long operation; the daemon records it
// as an operation stage so the CLI can print live progress.
type StageFunc func(name string, fn func(ctx context.Context) error) error

// Builder turns a Spec into an image directory. Every host command goes
// through Runner, so the steps are testable without root.
type Builder struct {
	Runner system.Runner
	// Log receives the streamed output of long commands (mmdebstrap).
	Log io.Writer
}

// Build bootstraps a rootfs in workDir and writes the finished image into
// outDir (which must not exist yet). workDir is removed afterwards.
func (b *Builder) Build(ctx context.Context, spec Spec, workDir, outDir string, stage StageFunc) (Meta, error) {
	meta := Meta{Name: spec.Name, Fingerprint: spec.Fingerprint(), Suite: spec.Suite, Spec: spec}
	rootDir := filepath.Join(workDir, "rootfs")
	defer os.RemoveAll(workDir)
	if err := os.RemoveAll(workDir); err != nil {
		return meta, fmt.Errorf("clean build dir: %w", err)
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return meta, fmt.Errorf("create image dir: %w", err)
	}
	log := b.Log
	if log == nil {
		log = io.Discard
	}

	var npm map[string]string
	steps := []struct {
		name string
		fn   func(ctx context.Context) error
	}{
		{"bootstrap", func(ctx context.Context) error {
			if err := os.MkdirAll(workDir, 0o755); err != nil {
				return err
			}
			_, err := b.Runner.RunIn(ctx, system.RunOpts{Stdout: log, Stderr: log}, "mmdebstrap", BootstrapArgs(spec, rootDir)...)
			return err
		}},
		{"customize", func(ctx context.Context) error { return Customize(rootDir) }},
		{"agents", func(ctx context.Context) error {
			if len(spec.NPM) == 0 {
				return nil
			}
			v, err := InstallAgents(ctx, b.Runner, log, rootDir, spec.NPM)
			npm = v
			return err
		}},
		{"kernel", func(ctx context.Context) error {
			kver, err := b.extractKernel(ctx, rootDir, outDir)
			meta.KernelVersion = kver
			return err
		}},
		{"manifest", func(ctx context.Context) error {
			root, err := OpenTree(rootDir)
			if err != nil {
				return err
			}
			st, err := readTreeFile(root, "var/lib/dpkg/status")
			root.Close()
			if err != nil {
				return err
			}
			pkgs := ParseDpkgStatus(st)
			m := Manifest{Suite: spec.Suite, KernelVersion: meta.KernelVersion, Vmlinux: FileVmlinux, Fingerprint: meta.Fingerprint, Packages: pkgs, NPM: npm}
			if npm["opencode-ai"] != "" {
				m.Services = append(m.Services, ServiceOpencode)
			}
			return writeManifestAndSeed(rootDir, outDir, m)
		}},
		{"mkfs", b.mkfsStep(rootDir, outDir, &meta)},
	}
	for _, s := range steps {
		if s.name == "agents" && len(spec.NPM) == 0 {
			continue
		}
		if err := stage(s.name, s.fn); err != nil {
			return meta, fmt.Errorf("%s: %w", s.name, err)
		}
	}
	return meta, nil
}

// BootstrapArgs is mmdebstrap's command line for spec into rootDir. The
// image build and the benchmark's raw baseline both use it, so the
// baseline runs exactly the command banger runs.
func BootstrapArgs(spec Spec, rootDir string) []string {
	args := []string{
		"--variant=minbase",
		"--include=" + strings.Join(spec.Packages, ","),
		"--components=main",
		// Keep the image free of apt lists and caches; the guest
		// runs apt-get update itself when it needs to.
		"--aptopt=Acquire::Languages \"none\"",
		spec.Suite, rootDir,
	}
	return append(args, spec.Sources()...)
}

// WriteManifest writes m as dir's manifest.json.
func WriteManifest(dir string, m Manifest) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, FileManifest), data, 0o644)
}

// writeManifestAndSeed writes the manifest and makes the tree's /root the
// image's work seed. A /root that is a link is refused (it would make a
// host directory every VM's /root); a tree without /root has no seed.
func writeManifestAndSeed(rootDir, outDir string, m Manifest) error {
	if err := WriteManifest(outDir, m); err != nil {
		return err
	}
	err := CopyTree(filepath.Join(rootDir, "root"), filepath.Join(outDir, DirWorkSeed))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("copy /root as the work seed: %w", err)
	}
	return nil
}

// mkfsStep is the last build stage: the filesystem, then the image's
// metadata with its size.
func (b *Builder) mkfsStep(rootDir, outDir string, meta *Meta) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		size, err := b.mkfs(ctx, rootDir, outDir)
		if err != nil {
			return err
		}
		meta.SizeBytes = size
		return WriteMeta(outDir, *meta)
	}
}

// mkfs makes outDir's rootfs.ext4 from the tree rootDir and returns its size.
func (b *Builder) mkfs(ctx context.Context, rootDir, outDir string) (int64, error) {
	size, err := rootfsSize(rootDir)
	if err != nil {
		return 0, err
	}
	img := filepath.Join(outDir, FileRootfs)
	if err := system.CreateSparse(img, size); err != nil {
		return 0, err
	}
	// mkfs.ext4 -d fills the filesystem from a directory: no loop mount,
	// no root-only mount namespace tricks.
	if _, err := b.Runner.Run(ctx, "mkfs.ext4", "-q", "-F", "-L", LabelRoot,
		"-E", "root_owner=0:0", "-d", rootDir, img); err != nil {
		return 0, err
	}
	return size, nil
}

// rootfsSize leaves room for the guest to install packages into its
// copy-on-write root: at least 2 GiB, at least twice what the tree holds.
func rootfsSize(dir string) (int64, error) {
	var used int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if info, err := d.Info(); err == nil && info.Mode().IsRegular() {
			used += info.Size()
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("measure rootfs: %w", err)
	}
	size := int64(2 << 30)
	if 2*used > size {
		size = (2*used + (1<<20 - 1)) &^ (1<<20 - 1)
	}
	return size, nil
}

// extractKernel copies the kernel and initrd that the kernel package
// installed inside the rootfs, and makes the ELF vmlinux Firecracker
// boots. The tree is read through an os.Root and both must be regular
// files: a link there could name any file of the host.
func (b *Builder) extractKernel(ctx context.Context, rootDir, outDir string) (string, error) {
	root, err := OpenTree(rootDir)
	if err != nil {
		return "", err
	}
	defer root.Close()
	names, err := readTreeDir(root, "boot")
	if err != nil {
		return "", fmt.Errorf("read rootfs /boot: %w", err)
	}
	var kernels []string
	for _, n := range names {
		if strings.HasPrefix(n, "vmlinuz-") {
			kernels = append(kernels, n)
		}
	}
	if len(kernels) == 0 {
		return "", fmt.Errorf("no kernel in rootfs /boot: is linux-image-cloud-amd64 in the package list?")
	}
	vmlinuz := kernels[len(kernels)-1]
	kver := strings.TrimPrefix(vmlinuz, "vmlinuz-")
	if _, err := root.Stat("lib/modules/" + kver); err != nil {
		return "", fmt.Errorf("kernel %s has no modules in the rootfs: %w", kver, treeErr(err, "lib/modules/"+kver))
	}
	for src, dst := range map[string]string{"boot/" + vmlinuz: FileKernel, "boot/initrd.img-" + kver: FileInitrd} {
		in, err := openRegular(root, src)
		if err != nil {
			return "", fmt.Errorf("copy %s: %w", src, err)
		}
		_, err = system.CloneFileFrom(ctx, in, filepath.Join(outDir, dst))
		in.Close()
		if err != nil {
			return "", fmt.Errorf("copy %s: %w", src, err)
		}
	}
	if err := b.makeVmlinux(ctx, filepath.Join(outDir, FileKernel), filepath.Join(outDir, FileVmlinux)); err != nil {
		return "", err
	}
	return kver, nil
}

// lz4Legacy is the magic of the LZ4 legacy frame Debian compresses x86
// kernels with; the payload after it is the ELF vmlinux.
var lz4Legacy = []byte{0x02, 0x21, 0x4c, 0x18}

// makeVmlinux decompresses the ELF vmlinux out of a bzImage: lz4 -dc from
// the offset of the LZ4 magic (FACTS.md). The result must start with the
// ELF magic, or Firecracker would fail much later with a vaguer error.
func (b *Builder) makeVmlinux(ctx context.Context, vmlinuz, out string) error {
	data, err := os.ReadFile(vmlinuz)
	if err != nil {
		return err
	}
	off := bytes.Index(data, lz4Legacy)
	if off < 0 {
		return fmt.Errorf("make vmlinux: %s is not LZ4-compressed", vmlinuz)
	}
	tail := out + ".lz4"
	if err := os.WriteFile(tail, data[off:], 0o644); err != nil {
		return err
	}
	defer os.Remove(tail)
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	// lz4 warns about the trailing data after the frame; the ELF is whole.
	_, runErr := b.Runner.RunIn(ctx, system.RunOpts{Stdout: f}, "lz4", "-dc", tail)
	head := make([]byte, 4)
	if _, err := f.ReadAt(head, 0); err != nil || !bytes.Equal(head, []byte("\x7fELF")) {
		return fmt.Errorf("make vmlinux: output is not ELF (lz4: %v)", runErr)
	}
	return nil
}

// Manifest is the sidecar that records what an image contains.
type Manifest struct {
	Suite         string `json:"suite"`
	KernelVersion string `json:"kernel_version"`
	// Vmlinux names the uncompressed ELF kernel (Firecracker boots it;
	// QEMU boots the bzImage), empty in images made before it existed.
	Vmlinux     string            `json:"vmlinux,omitempty"`
	Fingerprint string            `json:"fingerprint"`
	Packages    map[string]string `json:"packages"`
	// NPM maps the npm packages installed into /usr/local to their
	// versions; Services names the services the image starts (opencode).
	NPM      map[string]string `json:"npm,omitempty"`
	Services []string          `json:"services,omitempty"`
	// Distro is "debian" (when empty) or "void".
	Distro string `json:"distro,omitempty"`
	// From and ProvisionSHA256 are set for derived images (image build
	// --from BASE --provision SCRIPT): the base's name and the script's hash.
	From            string `json:"from,omitempty"`
	ProvisionSHA256 string `json:"provision_sha256,omitempty"`
}

// ParseDpkgStatus returns name → version of the installed packages in a
// dpkg status file.
func ParseDpkgStatus(data []byte) map[string]string {
	out := map[string]string{}
	for _, para := range strings.Split(string(data), "\n\n") {
		var name, version, status string
		for _, line := range strings.Split(para, "\n") {
			k, v, ok := strings.Cut(line, ": ")
			if !ok {
				continue
			}
			switch k {
			case "Package":
				name = v
			case "Version":
				version = v
			case "Status":
				status = v
			}
		}
		if name != "" && strings.HasSuffix(status, " installed") {
			out[name] = version
		}
	}
	return out
}

// WriteMeta writes image.json into dir.
func WriteMeta(dir string, m Meta) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return system.WriteFileAtomic(filepath.Join(dir, FileMeta), data, 0o644)
}

// CheckDir checks the files of an image directory (one `image import`
// is given may come from anyone): each is a regular file, the work seed a
// real directory, never a link that would make banger copy, boot or
// export a host file. The initrd, vmlinux and seed are optional: a
// registered kernel may not need an initrd.
func CheckDir(dir string) error {
	for _, f := range []string{FileRootfs, FileKernel, FileManifest, FileMeta, FileInitrd, FileVmlinux, DirWorkSeed} {
		fi, err := os.Lstat(filepath.Join(dir, f))
		optional := f == FileInitrd || f == FileVmlinux || f == DirWorkSeed
		switch {
		case errors.Is(err, fs.ErrNotExist) && optional:
		case err != nil:
			return fmt.Errorf("%w: %s is missing %s", ErrInvalid, dir, f)
		case f == DirWorkSeed && !fi.IsDir():
			return fmt.Errorf("%w: %s in %s is %s, not a directory: refusing it", ErrInvalid, f, dir, describeMode(fi.Mode()))
		case f != DirWorkSeed && !fi.Mode().IsRegular():
			return fmt.Errorf("%w: %s in %s is %s, not a regular file: refusing it", ErrInvalid, f, dir, describeMode(fi.Mode()))
		}
	}
	return nil
}

// ReadMeta reads and checks an image directory.
func ReadMeta(dir string) (Meta, error) {
	var m Meta
	if fi, err := os.Lstat(filepath.Join(dir, FileMeta)); err == nil && !fi.Mode().IsRegular() {
		return m, fmt.Errorf("%w: %s in %s is %s, not a regular file: refusing it", ErrInvalid, FileMeta, dir, describeMode(fi.Mode()))
	}
	data, err := os.ReadFile(filepath.Join(dir, FileMeta))
	if err != nil {
		return m, fmt.Errorf("%w: %s has no %s: %v", ErrInvalid, dir, FileMeta, err)
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return m, fmt.Errorf("%w: parse %s: %v", ErrInvalid, FileMeta, err)
	}
	if err := CheckDir(dir); err != nil {
		return m, err
	}
	if m.Name == "" || m.Fingerprint == "" {
		return m, fmt.Errorf("%w: %s lacks a name or fingerprint", ErrInvalid, FileMeta)
	}
	return m, nil
}
