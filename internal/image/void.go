package image

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/tarx"
)

// Void Linux images (experimental) are assembled from parts the user
// staged: a rootfs tarball and a kernel, initramfs and modules directory
// that belong together. Void's repositories are not needed at build time.

//go:embed guest-void
var voidFiles embed.FS

// voidRecipe versions the Void assembly steps.
const voidRecipe = "1"

// VoidSpec names the inputs of a Void image; every path is absolute.
type VoidSpec struct {
	Name      string `json:"name"`
	RootfsTar string `json:"rootfs_tar"`
	Kernel    string `json:"kernel"`
	Initrd    string `json:"initrd"`
	Modules   string `json:"modules"`
}

// CheckVoid validates the inputs before anything is built: the paths
// exist with the right types, and kernel, modules and initramfs are of
// the same kernel release, which it returns.
func (b *Builder) CheckVoid(ctx context.Context, s VoidSpec) (string, error) {
	for _, in := range []struct{ flag, path string }{
		{"--rootfs-tar", s.RootfsTar}, {"--kernel", s.Kernel}, {"--initrd", s.Initrd}, {"--modules", s.Modules},
	} {
		if in.path == "" {
			return "", fmt.Errorf("%w: --distro void needs %s", ErrInvalid, in.flag)
		}
		if !filepath.IsAbs(in.path) {
			return "", fmt.Errorf("%w: %s %q is not an absolute path", ErrInvalid, in.flag, in.path)
		}
		st, err := os.Stat(in.path)
		if err != nil {
			return "", fmt.Errorf("%w: %s: %v", ErrInvalid, in.flag, err)
		}
		if (in.flag == "--modules") != st.IsDir() {
			return "", fmt.Errorf("%w: %s %s: --modules takes a directory, the others files", ErrInvalid, in.flag, in.path)
		}
	}
	if err := sniffTarball(s.RootfsTar); err != nil {
		return "", err
	}
	kver, err := KernelVersion(s.Kernel)
	if err != nil {
		return "", fmt.Errorf("--kernel: %w", err)
	}
	if base := filepath.Base(s.Modules); base != kver {
		return "", fmt.Errorf("%w: --modules %s is for kernel %s, but --kernel is %s", ErrInvalid, s.Modules, base, kver)
	}
	if _, err := os.Stat(filepath.Join(s.Modules, "modules.dep")); err != nil {
		return "", fmt.Errorf("%w: --modules %s has no modules.dep (run depmod for %s)", ErrInvalid, s.Modules, kver)
	}
	mods, err := b.initrdModules(ctx, s.Initrd)
	if err != nil {
		return "", fmt.Errorf("--initrd: %w", err)
	}
	if !mods[kver] {
		var have []string
		for v := range mods {
			have = append(have, v)
		}
		sort.Strings(have)
		return "", fmt.Errorf("%w: --initrd %s carries modules for %v, not for kernel %s", ErrInvalid, s.Initrd, have, kver)
	}
	return kver, nil
}

// sniffTarball refuses a --rootfs-tar that is neither a tar archive nor
// compressed in a way extractRootfs can undo.
func sniffTarball(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	head := make([]byte, 512)
	n, _ := io.ReadFull(f, head)
	head = head[:n]
	for _, magic := range [][]byte{{0x1f, 0x8b}, {0xfd, '7', 'z', 'X', 'Z', 0}, {0x28, 0xb5, 0x2f, 0xfd}} {
		if bytes.HasPrefix(head, magic) {
			return nil
		}
	}
	if n == 512 && string(head[257:262]) == "ustar" {
		return nil
	}
	return fmt.Errorf("%w: --rootfs-tar %s is not a tar archive (plain, gzip, xz or zstd)", ErrInvalid, p)
}

// VoidFingerprint hashes the recipe, the guest files and the bytes of
// every input, so a rebuild of unchanged inputs is recognised.
func VoidFingerprint(s VoidSpec) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "void-recipe=%s\n", voidRecipe)
	for _, p := range []string{s.RootfsTar, s.Kernel, s.Initrd} {
		if err := hashInto(h, p); err != nil {
			return "", err
		}
	}
	err := filepath.WalkDir(s.Modules, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(s.Modules, p)
		fmt.Fprintf(h, "mod=%s %v\n", rel, e.Type())
		if e.Type().IsRegular() {
			return hashInto(h, p)
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("fingerprint modules: %w", err)
	}
	_ = fs.WalkDir(voidFiles, "guest-void", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := voidFiles.ReadFile(p)
			fmt.Fprintf(h, "file=%s %d\n", p, len(b))
			h.Write(b)
		}
		return err
	})
	return hex.EncodeToString(h.Sum(nil)), nil
}

func hashInto(w io.Writer, p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	fh := sha256.New()
	if _, err := io.Copy(fh, f); err != nil {
		return fmt.Errorf("hash %s: %w", p, err)
	}
	fmt.Fprintf(w, "%x\n", fh.Sum(nil))
	return nil
}

// BuildVoid assembles a Void image in outDir from checked inputs (kver
// from CheckVoid, fp from VoidFingerprint). It does not boot it: that is
// `image verify`.
func (b *Builder) BuildVoid(ctx context.Context, s VoidSpec, kver, fp, workDir, outDir string, stage StageFunc) (Meta, error) {
	meta := Meta{Name: s.Name, Fingerprint: fp, Suite: "void", KernelVersion: kver, Distro: "void", Spec: Spec{Name: s.Name}}
	rootDir := filepath.Join(workDir, "rootfs")
	defer os.RemoveAll(workDir)
	if err := os.MkdirAll(rootDir, 0o755); err != nil {
		return meta, err
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return meta, fmt.Errorf("create image dir: %w", err)
	}
	steps := []struct {
		name string
		fn   func(ctx context.Context) error
	}{
		{"extract", func(ctx context.Context) error { return b.extractRootfs(ctx, s.RootfsTar, rootDir) }},
		{"customize", func(ctx context.Context) error { return CustomizeVoid(rootDir) }},
		{"kernel", func(ctx context.Context) error {
			for src, dst := range map[string]string{s.Kernel: FileKernel, s.Initrd: FileInitrd} {
				if err := system.CloneFile(ctx, src, filepath.Join(outDir, dst)); err != nil {
					return fmt.Errorf("copy %s: %w", filepath.Base(src), err)
				}
			}
			// Void's /lib is a link to usr/lib; the modules go where the
			// guest's modprobe looks, through the tree's own os.Root.
			if err := copyModules(s.Modules, rootDir, "usr/lib/modules/"+kver); err != nil {
				return fmt.Errorf("copy modules: %w", err)
			}
			// Firecracker needs an ELF vmlinux; only LZ4 kernels can be
			// unpacked here, others boot under QEMU only.
			if err := b.makeVmlinux(ctx, filepath.Join(outDir, FileKernel), filepath.Join(outDir, FileVmlinux)); err != nil {
				os.Remove(filepath.Join(outDir, FileVmlinux))
			}
			return nil
		}},
		{"manifest", func(ctx context.Context) error {
			pkgs, err := voidPackages(rootDir)
			if err != nil {
				return err
			}
			return writeManifestAndSeed(rootDir, outDir, Manifest{Suite: "void", Distro: "void", KernelVersion: kver, Fingerprint: fp, Packages: pkgs})
		}},
		{"mkfs", b.mkfsStep(rootDir, outDir, &meta)},
	}
	for _, st := range steps {
		if err := stage(st.name, st.fn); err != nil {
			return meta, fmt.Errorf("%s: %w", st.name, err)
		}
	}
	return meta, nil
}

// extractRootfs unpacks a (gzip, xz, zstd or plain) tarball into dir and
// checks it is a Void tree.
func (b *Builder) extractRootfs(ctx context.Context, tarball, dir string) error {
	f, err := os.Open(tarball)
	if err != nil {
		return err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	head, _ := br.Peek(6)
	var r io.Reader = br
	var wait func() error
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("read %s: %w", tarball, err)
		}
		r = zr
	case bytes.HasPrefix(head, []byte{0xfd, '7', 'z', 'X', 'Z', 0}), bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		tool := "xz"
		if head[0] == 0x28 {
			tool = "zstd"
		}
		pr, pw := io.Pipe()
		done := make(chan error, 1)
		go func() {
			_, err := b.Runner.RunIn(ctx, system.RunOpts{Stdin: br, Stdout: pw}, tool, "-dc")
			pw.CloseWithError(err)
			done <- err
		}()
		r, wait = pr, func() error { pr.Close(); return <-done }
	}
	_, err = tarx.ExtractRootfs(ctx, r, dir, 64<<30)
	if wait != nil {
		if werr := wait(); err == nil && werr != nil {
			err = werr
		}
	}
	if err != nil {
		return fmt.Errorf("extract %s: %w", tarball, err)
	}
	// Read through the tree: an os-release that is a link to the host's
	// must not vouch for the tarball.
	var osr []byte
	if root, err := OpenTree(dir); err == nil {
		osr, _ = readTreeFile(root, "etc/os-release")
		root.Close()
	}
	if !bytes.Contains(osr, []byte(`ID="void"`)) && !bytes.Contains(osr, []byte("ID=void")) {
		return fmt.Errorf("%w: %s is not a Void Linux rootfs (its etc/os-release has no ID=void)", ErrInvalid, tarball)
	}
	return nil
}

// CustomizeVoid turns a Void tree into a banger guest: per-VM identity
// instead of baked keys, the banger disks in fstab, and runit starting
// the agent and sshd. Like Customize it only touches the directory, and
// only through an os.Root on it.
func CustomizeVoid(dir string) error {
	root, err := OpenTree(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	if err := removeHostKeys(root); err != nil {
		return err
	}
	voidFile := func(name string) string {
		b, err := voidFiles.ReadFile("guest-void/" + name)
		if err != nil {
			panic("image: missing embedded guest file " + name)
		}
		return string(b)
	}
	files := []guestFileSpec{
		{"etc/machine-id", "", 0o444},
		{"etc/hostname", "banger\n", 0o644},
		{"etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\tbanger\n::1\tlocalhost\n", 0o644},
		{"etc/fstab", guestFile("fstab"), 0o644},
		{"etc/ssh/sshd_config.d/banger.conf", guestFile("sshd-banger.conf"), 0o644},
		{"etc/resolv.conf", "nameserver 10.0.2.3\n", 0o644},
		{"etc/runit/core-services/90-banger.sh", voidFile("90-banger.sh"), 0o644},
		{"etc/sv/banger-agent/run", voidFile("banger-agent.run"), 0o755},
	}
	if err := writeGuestFiles(root, files); err != nil {
		return err
	}
	if err := root.MkdirAll("run/banger/seed", 0o755); err != nil {
		return treeErr(err, "run/banger/seed")
	}
	// Void's sshd_config has no Include line: add one for banger's drop-in.
	const sshdConfig = "etc/ssh/sshd_config"
	cfg, err := readTreeFile(root, sshdConfig)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return err
	case !bytes.Contains(cfg, []byte("sshd_config.d")):
		cfg = append([]byte("Include /etc/ssh/sshd_config.d/*.conf\n"), cfg...)
		if err := writeTreeFile(root, sshdConfig, cfg, 0o644); err != nil {
			return err
		}
	}
	enable := []string{"banger-agent"}
	if fi, err := root.Lstat("etc/sv/sshd"); err == nil && fi.IsDir() {
		enable = append(enable, "sshd")
	}
	for _, svc := range enable {
		if err := symlinkTree(root, "/etc/sv/"+svc, "etc/runit/runsvdir/default/"+svc); err != nil {
			return fmt.Errorf("enable %s: %w", svc, err)
		}
	}
	return nil
}

// copyModules copies the modules directory the user staged (a host path
// of their choosing) to rel inside the rootfs tree dir, through an
// os.Root on the tree.
func copyModules(src, dir, rel string) error {
	s, err := os.OpenRoot(src)
	if err != nil {
		return err
	}
	defer s.Close()
	root, err := OpenTree(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	if err := mkdirReplacing(root, rel); err != nil {
		return err
	}
	d, err := root.OpenRoot(rel)
	if err != nil {
		return treeErr(err, rel)
	}
	defer d.Close()
	return CopyInto(s, d)
}

// voidPackages reads name → version from xbps's package database
// (var/db/xbps/pkgdb-*.plist): each top-level key is a package whose
// dict holds its "pkgver" (name-version_revision).
func voidPackages(dir string) (map[string]string, error) {
	root, err := OpenTree(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	names, err := readTreeDir(root, "var/db/xbps")
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		if strings.HasPrefix(n, "pkgdb-") && strings.HasSuffix(n, ".plist") {
			data, err := readTreeFile(root, "var/db/xbps/"+n)
			if err != nil {
				return nil, err
			}
			return ParsePkgdb(bytes.NewReader(data))
		}
	}
	return nil, fmt.Errorf("%w: no xbps package database (var/db/xbps/pkgdb-*.plist) in the rootfs", ErrInvalid)
}

// ParsePkgdb parses an xbps pkgdb property list.
func ParsePkgdb(r io.Reader) (map[string]string, error) {
	dec := xml.NewDecoder(r)
	out := map[string]string{}
	depth := 0 // dict nesting
	var lastKey, pkg, text string
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%w: parse xbps pkgdb: %v", ErrInvalid, err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			text = ""
			if t.Name.Local == "dict" {
				depth++
				if depth == 2 {
					pkg = lastKey
				}
			}
		case xml.CharData:
			text += string(t)
		case xml.EndElement:
			switch t.Name.Local {
			case "dict":
				depth--
			case "key":
				lastKey = text
			case "string":
				if depth == 2 && lastKey == "pkgver" && pkg != "" && !strings.HasPrefix(pkg, "_") {
					out[pkg] = strings.TrimPrefix(text, pkg+"-")
				}
			}
		}
	}
}

// CheckVoidInitrd lists the kernel releases an initramfs has modules for.
func (b *Builder) CheckVoidInitrd(ctx context.Context, path string) (map[string]bool, error) {
	return b.initrdModules(ctx, path)
}

// initrdModules lists the kernel releases an initramfs carries modules
// for (lib/modules/<release>/ or usr/lib/modules/<release>/). It walks
// the concatenated cpio segments dracut and initramfs-tools write, each
// plain or compressed.
func (b *Builder) initrdModules(ctx context.Context, path string) (map[string]bool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	found := map[string]bool{}
	for len(data) > 0 {
		data = bytes.TrimLeft(data, "\x00")
		if len(data) == 0 {
			break
		}
		if bytes.HasPrefix(data, []byte("070701")) || bytes.HasPrefix(data, []byte("070702")) {
			rest, err := cpioNames(data, func(name string) {
				name = strings.TrimPrefix(strings.TrimPrefix(name, "./"), "usr/")
				if v, ok := strings.CutPrefix(name, "lib/modules/"); ok {
					if v, _, _ = strings.Cut(v, "/"); v != "" {
						found[v] = true
					}
				}
			})
			if err != nil {
				return nil, err
			}
			data = rest
			continue
		}
		// A compressed segment runs to the end of the file.
		var tool string
		switch {
		case bytes.HasPrefix(data, []byte{0x1f, 0x8b}):
			zr, err := gzip.NewReader(bytes.NewReader(data))
			if err != nil {
				return nil, err
			}
			zr.Multistream(false)
			if data, err = io.ReadAll(zr); err != nil {
				return nil, fmt.Errorf("gunzip initramfs: %w", err)
			}
			continue
		case bytes.HasPrefix(data, []byte{0x28, 0xb5, 0x2f, 0xfd}):
			tool = "zstd"
		case bytes.HasPrefix(data, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
			tool = "xz"
		case bytes.HasPrefix(data, lz4Legacy):
			tool = "lz4"
		default:
			return nil, fmt.Errorf("%w: %s is not an initramfs (no cpio archive, no known compression)", ErrInvalid, path)
		}
		var out bytes.Buffer
		if _, err := b.Runner.RunIn(ctx, system.RunOpts{Stdin: bytes.NewReader(data), Stdout: &out}, tool, "-dc"); err != nil {
			return nil, fmt.Errorf("unpack initramfs with %s: %w", tool, err)
		}
		data = out.Bytes()
	}
	return found, nil
}

// cpioNames walks one newc cpio archive up to its trailer, calling fn for
// each name, and returns what follows the archive.
func cpioNames(data []byte, fn func(string)) ([]byte, error) {
	const hdrLen = 110
	align := func(n int) int { return (n + 3) &^ 3 }
	off := 0
	for {
		if off+hdrLen > len(data) {
			return nil, fmt.Errorf("%w: truncated cpio header at %d", ErrInvalid, off)
		}
		h := data[off : off+hdrLen]
		if string(h[:5]) != "07070" {
			return nil, fmt.Errorf("%w: bad cpio magic at %d", ErrInvalid, off)
		}
		field := func(i int) (int, error) {
			v, err := strconv.ParseUint(string(h[6+8*i:6+8*i+8]), 16, 32)
			return int(v), err
		}
		fsize, err1 := field(6)
		nsize, err2 := field(11)
		if err1 != nil || err2 != nil || nsize == 0 {
			return nil, fmt.Errorf("%w: bad cpio header at %d", ErrInvalid, off)
		}
		nameEnd := off + hdrLen + nsize
		dataStart := align(nameEnd)
		dataEnd := align(dataStart + fsize)
		if nameEnd > len(data) || dataStart+fsize > len(data) {
			return nil, fmt.Errorf("%w: truncated cpio entry at %d", ErrInvalid, off)
		}
		name := strings.TrimRight(string(data[off+hdrLen:nameEnd]), "\x00")
		if name == "TRAILER!!!" {
			return data[min(dataEnd, len(data)):], nil
		}
		fn(name)
		off = dataEnd
	}
}
