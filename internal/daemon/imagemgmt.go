package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/system"
)

// Operation kinds of image management.
const (
	opImageVerify = "image.verify"
)

// verifyBootFunc boots an image directory once and checks the guest.
type verifyBootFunc func(ctx context.Context, imgDir string, meta image.Meta) error

// verifyBoot is the real verification boot unless a test replaced it.
func (e *imageEngine) verifyBoot() verifyBootFunc {
	if e.verifyHook != nil {
		return e.verifyHook
	}
	return e.verifyImage
}

// registerImage records an image directory. The first image becomes
// managed and the default; later ones are staged until `image promote`,
// so a new build never becomes what VMs boot by accident.
func (e *imageEngine) registerImage(ctx context.Context, id, dir string, meta image.Meta) (store.Image, error) {
	manifest, _ := os.ReadFile(filepath.Join(dir, image.FileManifest))
	img := store.Image{
		ID: id, Name: meta.Name, Fingerprint: meta.Fingerprint, Dir: dir, State: store.ImageStateStaged,
		Suite: meta.Suite, KernelVersion: meta.KernelVersion, SizeBytes: meta.SizeBytes,
		CreatedAt: time.Now().UTC(), Manifest: string(manifest),
	}
	err := e.store.WithTx(ctx, func(tx *store.Store) error {
		_, err := tx.DefaultImage(ctx)
		switch {
		case errors.Is(err, store.ErrNotFound):
			img.State, img.Default = store.ImageStateManaged, true
		case err != nil:
			return err
		}
		return tx.CreateImage(ctx, &img)
	})
	if errors.Is(err, store.ErrExists) {
		return img, api.Errorf(api.CodeConflict, "delete the existing one first", "an image named %q already exists", meta.Name)
	}
	return img, err
}

// VerifyImage boots an image in a throwaway VM as an operation and
// records the outcome: a failed verify keeps a staged image from being
// promoted until a verify passes.
func (e *imageEngine) VerifyImage(ctx context.Context, name string) (string, error) {
	img, err := e.getImage(ctx, name)
	if err != nil {
		return "", err
	}
	if err := e.checks.preflight(ctx, checksForCreate); err != nil {
		return "", api.Errorf(api.CodeUnavailable, "run `banger doctor` for the full list", "%v", err)
	}
	return e.ops.start(ctx, opImageVerify, img.Name, func(ctx context.Context, stage stageFunc) (any, error) {
		return e.verifyRecorded(ctx, img, stage)
	})
}

func (e *imageEngine) verifyRecorded(ctx context.Context, img store.Image, stage stageFunc) (api.Image, error) {
	meta := image.Meta{Name: img.Name, Fingerprint: img.Fingerprint, Suite: img.Suite, KernelVersion: img.KernelVersion}
	verr := stage("verify", func(ctx context.Context) error { return e.verifyBoot()(ctx, img.Dir, meta) })
	msg := ""
	if verr != nil {
		msg = verr.Error()
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := e.store.SetImageVerified(rctx, img.ID, time.Now().UTC(), msg); err != nil {
		return api.Image{}, errors.Join(verr, err)
	}
	if verr != nil {
		return api.Image{}, verr
	}
	img, err := e.store.GetImage(ctx, img.ID)
	if err != nil {
		return api.Image{}, err
	}
	return e.imageView(ctx, img, false), nil
}

// PromoteImage makes a staged image managed and the default. An image
// whose last verify failed is refused until a verify passes.
func (e *imageEngine) PromoteImage(ctx context.Context, name string) (store.Image, error) {
	img, err := e.getImage(ctx, name)
	if err != nil {
		return img, err
	}
	if img.VerifyError != "" {
		return img, api.Errorf(api.CodeConflict, fmt.Sprintf("fix the image and run `banger image verify %s` until it passes", img.Name),
			"image %q failed its last verify: %s", img.Name, img.VerifyError)
	}
	if img.State == store.ImageStateManaged && img.Default && (img.ReadySnapshotID != "" || !e.cfg.Image.ReadySnapshot) {
		return img, nil
	}
	if err := e.store.PromoteImage(ctx, img.ID); err != nil {
		return img, err
	}
	e.log.Info("image promoted", "image", img.Name)
	// Its ready snapshot is made in the background (`banger op list`
	// shows it); until it exists, its VMs boot cold.
	promoted, err := e.store.GetImage(ctx, img.ID)
	if err == nil && e.cfg.Image.ReadySnapshot && e.ops != nil && e.builds.acquire() {
		if _, oerr := e.ops.start(ctx, "image.ready", img.Name, func(ctx context.Context, stage stageFunc) (any, error) {
			defer e.builds.release()
			return nil, e.vms.makeReadySnapshot(ctx, stage, promoted)
		}); oerr != nil {
			e.builds.release()
		}
	}
	return promoted, err
}

// needsHeal reports whether img was made by an older banger and lacks
// the fingerprint or manifest this one records.
func needsHeal(img store.Image) bool {
	if img.Fingerprint == "" || img.Manifest == "" || img.KernelVersion == "" {
		return true
	}
	for _, f := range []string{image.FileMeta, image.FileManifest} {
		if _, err := os.Stat(filepath.Join(img.Dir, f)); err != nil {
			return true
		}
	}
	return false
}

// healImage computes and stores the metadata an older image lacks,
// without a rebuild: the kernel release from the bzImage header, the
// package list read out of the rootfs with debugfs (no mount), and a
// fingerprint of what identifies the image's contents.
func (e *imageEngine) healImage(ctx context.Context, img store.Image) (store.Image, error) {
	kernel := filepath.Join(img.Dir, image.FileKernel)
	if img.KernelVersion == "" {
		kver, err := image.KernelVersion(kernel)
		if err != nil {
			return img, fmt.Errorf("heal image %s: %w", img.Name, err)
		}
		img.KernelVersion = kver
	}
	rootfs := filepath.Join(img.Dir, image.FileRootfs)
	status, err := readDpkgStatus(ctx, e.runner, rootfs)
	if err != nil {
		e.log.Warn("heal image: no package list", "image", img.Name, "err", err)
	}
	st, err := os.Stat(rootfs)
	if err != nil {
		return img, fmt.Errorf("heal image %s: %w", img.Name, err)
	}
	img.SizeBytes = st.Size()
	if img.Fingerprint == "" {
		fp, err := healFingerprint(img.Dir, status, st.Size())
		if err != nil {
			return img, fmt.Errorf("heal image %s: %w", img.Name, err)
		}
		img.Fingerprint = fp
	}
	m := image.Manifest{Suite: img.Suite, KernelVersion: img.KernelVersion, Fingerprint: img.Fingerprint, Packages: image.ParseDpkgStatus(status)}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return img, err
	}
	if err := system.WriteFileAtomic(filepath.Join(img.Dir, image.FileManifest), data, 0o644); err != nil {
		return img, fmt.Errorf("heal image %s: %w", img.Name, err)
	}
	img.Manifest = string(data)
	meta := image.Meta{Name: img.Name, Fingerprint: img.Fingerprint, Suite: img.Suite, KernelVersion: img.KernelVersion,
		SizeBytes: img.SizeBytes, Spec: image.Spec{Name: img.Name, Suite: img.Suite}}
	if err := image.WriteMeta(img.Dir, meta); err != nil {
		return img, fmt.Errorf("heal image %s: %w", img.Name, err)
	}
	if err := e.store.UpdateImage(ctx, &img); err != nil {
		return img, err
	}
	e.log.Info("image healed: fingerprint and manifest recorded", "image", img.Name, "fingerprint", img.Fingerprint[:12], "packages", len(m.Packages))
	return img, nil
}

// healFingerprint identifies an image that was not built from a Spec:
// kernel and initrd contents, the package list and the rootfs size.
// Hashing the whole rootfs would make the first create minutes slower.
func healFingerprint(dir string, dpkgStatus []byte, rootfsSize int64) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "healed\nrootfs-size=%d\n", rootfsSize)
	for _, f := range []string{image.FileKernel, image.FileInitrd} {
		if err := hashFile(h, filepath.Join(dir, f), true); err != nil {
			return "", err
		}
	}
	h.Write(dpkgStatus)
	return hex.EncodeToString(h.Sum(nil)), nil
}

func hashFile(w io.Writer, p string, optional bool) error {
	f, err := os.Open(p)
	if optional && errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(w, "%s: absent\n", filepath.Base(p))
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	fmt.Fprintf(w, "%s:\n", filepath.Base(p))
	_, err = io.Copy(w, f)
	return err
}

// RegisterImage registers an image made elsewhere from host files. The
// kernel release is read from the bzImage header; a modules directory
// must be named after it, and the rootfs must carry (or receive) the
// matching /lib/modules/<release>, or the guest's virtio modules never
// load. Nothing is mounted: the rootfs is read and written with debugfs.
func (e *imageEngine) RegisterImage(ctx context.Context, req api.RegisterImageRequest) (store.Image, error) {
	if err := api.ValidateName("image", req.Name); err != nil {
		return store.Image{}, err
	}
	for flag, p := range map[string]string{"--rootfs": req.Rootfs, "--kernel": req.Kernel, "--initrd": req.Initrd, "--modules": req.Modules} {
		if p == "" && (flag == "--initrd" || flag == "--modules") {
			continue
		}
		if !filepath.IsAbs(p) {
			return store.Image{}, api.Errorf(api.CodeInvalid, "pass absolute paths", "%s %q is not an absolute path", flag, p)
		}
		st, err := os.Stat(p)
		if err != nil {
			return store.Image{}, api.Errorf(api.CodeInvalid, "check the path", "%s: %v", flag, err)
		}
		if (flag == "--modules") != st.IsDir() {
			return store.Image{}, api.Errorf(api.CodeInvalid, "--modules takes a directory, the others files", "%s %s has the wrong type", flag, p)
		}
	}
	kver, err := image.KernelVersion(req.Kernel)
	if err != nil {
		return store.Image{}, api.Errorf(api.CodeInvalid, "pass an x86 bzImage (vmlinuz)", "--kernel: %v", err)
	}
	if req.Modules != "" && filepath.Base(req.Modules) != kver {
		return store.Image{}, api.Errorf(api.CodeInvalid, fmt.Sprintf("pass the modules of this kernel (a directory named %s)", kver),
			"--modules %s does not match the kernel: its release is %s", req.Modules, kver)
	}
	if _, err := e.store.GetImage(ctx, req.Name); err == nil {
		return store.Image{}, api.Errorf(api.CodeConflict, "delete it first or pick another name", "an image named %q already exists", req.Name)
	}

	id := newID(4)
	dir := e.layout.ImageDir(id)
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(dir)
		}
	}()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return store.Image{}, err
	}
	copies := map[string]string{req.Rootfs: image.FileRootfs, req.Kernel: image.FileKernel}
	if req.Initrd != "" {
		copies[req.Initrd] = image.FileInitrd
	}
	for src, dst := range copies {
		if err := system.CloneFile(ctx, src, filepath.Join(dir, dst)); err != nil {
			return store.Image{}, fmt.Errorf("copy %s: %w", filepath.Base(src), err)
		}
	}
	rootfs := filepath.Join(dir, image.FileRootfs)
	modDir, err := e.rootfsModulesDir(ctx, rootfs, kver)
	if err != nil {
		return store.Image{}, err
	}
	if modDir == "" {
		if req.Modules == "" {
			return store.Image{}, api.Errorf(api.CodeInvalid, "pass --modules DIR with the kernel's modules",
				"the rootfs has no /lib/modules/%s: the kernel's modules would never load", kver)
		}
		if err := e.injectModules(ctx, rootfs, req.Modules, kver); err != nil {
			return store.Image{}, err
		}
	}
	// /root of the rootfs becomes the work seed, as for built images. The
	// image may be crafted: its /root tree is checked before anything of
	// it is written on the host (see image.ReadExt4Seed).
	err = image.ReadExt4Seed(ctx, e.runner, rootfs, filepath.Join(dir, image.DirWorkSeed))
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case errors.Is(err, image.ErrInvalid):
		return store.Image{}, api.Errorf(api.CodeInvalid, "fix the rootfs (its /root must be a plain directory tree) and register it again", "--rootfs %s: %v", req.Rootfs, err)
	case err != nil:
		return store.Image{}, fmt.Errorf("read the work seed from the rootfs: %w", err)
	}

	status, _ := readDpkgStatus(ctx, e.runner, rootfs)
	h := sha256.New()
	fmt.Fprintf(h, "registered\nkernel=%s\n", kver)
	for _, f := range []string{image.FileKernel, image.FileInitrd, image.FileRootfs} {
		if err := hashFile(h, filepath.Join(dir, f), true); err != nil {
			return store.Image{}, fmt.Errorf("fingerprint: %w", err)
		}
	}
	fp := hex.EncodeToString(h.Sum(nil))
	st, err := os.Stat(rootfs)
	if err != nil {
		return store.Image{}, err
	}
	m := image.Manifest{KernelVersion: kver, Fingerprint: fp, Packages: image.ParseDpkgStatus(status)}
	data, _ := json.MarshalIndent(m, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, image.FileManifest), data, 0o644); err != nil {
		return store.Image{}, err
	}
	meta := image.Meta{Name: req.Name, Fingerprint: fp, KernelVersion: kver, SizeBytes: st.Size(), Spec: image.Spec{Name: req.Name}}
	if err := image.WriteMeta(dir, meta); err != nil {
		return store.Image{}, err
	}
	img, err := e.registerImage(ctx, id, dir, meta)
	if err != nil {
		return img, err
	}
	ok = true
	e.log.Info("image registered", "image", img.Name, "kernel", kver, "state", img.State)
	return img, nil
}

// rootfsModulesDir returns where the rootfs keeps the modules of kver
// ("" when it has none), looking through debugfs.
func (e *imageEngine) rootfsModulesDir(ctx context.Context, rootfs, kver string) (string, error) {
	for _, p := range []string{"/lib/modules/" + kver, "/usr/lib/modules/" + kver} {
		out, err := e.runner.Run(ctx, "debugfs", "-R", "stat "+p, rootfs)
		if err != nil {
			return "", fmt.Errorf("inspect rootfs: %w", err)
		}
		if strings.Contains(string(out), "Type: directory") {
			return p, nil
		}
	}
	return "", nil
}

// injectModules copies a modules tree into the rootfs with one debugfs
// script (mkdir, write, symlink): no loop mount, no root needed.
func (e *imageEngine) injectModules(ctx context.Context, rootfs, src, kver string) error {
	base := "/lib/modules"
	// Merged /usr: /lib is a symlink, which debugfs does not follow.
	if out, err := e.runner.Run(ctx, "debugfs", "-R", "stat /lib", rootfs); err == nil && strings.Contains(string(out), "Type: symlink") {
		base = "/usr/lib/modules"
	}
	script, err := modulesScript(src, base+"/"+kver, base)
	if err != nil {
		return err
	}
	if _, err := e.runner.RunIn(ctx, system.RunOpts{Stdin: strings.NewReader(script)}, "debugfs", "-w", "-f", "-", rootfs); err != nil {
		return fmt.Errorf("copy modules into the rootfs: %w", err)
	}
	if dir, err := e.rootfsModulesDir(ctx, rootfs, kver); err != nil || dir == "" {
		return fmt.Errorf("copy modules into the rootfs: %s/%s missing afterwards (%v)", base, kver, err)
	}
	return nil
}

// modulesScript renders the debugfs commands that recreate the tree src
// at dst (parents from base down are created first).
func modulesScript(src, dst, base string) (string, error) {
	var b strings.Builder
	parts := strings.Split(strings.TrimPrefix(base, "/"), "/")
	for i := range parts {
		fmt.Fprintf(&b, "mkdir \"/%s\"\n", strings.Join(parts[:i+1], "/"))
	}
	var lines []string
	err := filepath.WalkDir(src, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := dst
		if rel != "." {
			target = dst + "/" + filepath.ToSlash(rel)
		}
		if strings.ContainsAny(target, "\"\n") || strings.ContainsAny(p, "\"\n") {
			return fmt.Errorf("modules path %q has characters debugfs cannot take", p)
		}
		switch {
		case e.IsDir():
			lines = append(lines, fmt.Sprintf("mkdir \"%s\"", target))
		case e.Type()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			lines = append(lines, fmt.Sprintf("symlink \"%s\" \"%s\"", target, l))
		case e.Type().IsRegular():
			lines = append(lines, fmt.Sprintf("write \"%s\" \"%s\"", p, target))
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	// WalkDir visits parents before children, which is the order
	// debugfs needs.
	b.WriteString(strings.Join(lines, "\n"))
	b.WriteString("\n")
	return b.String(), nil
}

// maxDpkgStatus bounds the package list read out of a rootfs: the image
// decides its size, and a real one is a few MiB.
const maxDpkgStatus = 64 << 20

// readDpkgStatus reads /var/lib/dpkg/status out of the ext4 rootfs with
// debugfs (no mount), refusing one over maxDpkgStatus.
func readDpkgStatus(ctx context.Context, r system.Runner, rootfs string) ([]byte, error) {
	out, err := r.RunIn(ctx, system.RunOpts{MaxStdout: maxDpkgStatus}, "debugfs", "-R", "cat /var/lib/dpkg/status", rootfs)
	if errors.Is(err, system.ErrOutputTooLarge) {
		return nil, fmt.Errorf("the rootfs's /var/lib/dpkg/status is more than %d bytes: ignoring it", maxDpkgStatus)
	}
	return out, err
}
