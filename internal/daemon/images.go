package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentclient"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/sshkeys"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/system"
)

// BuildImage validates a build request and runs the build as an operation.
func (e *imageEngine) BuildImage(ctx context.Context, req api.BuildImageRequest) (string, error) {
	if req.Name != "" {
		if err := api.ValidateName("image", req.Name); err != nil {
			return "", err
		}
	}
	kind, target := "image.build", req.Name
	var run func(ctx context.Context, stage stageFunc) (store.Image, error)
	switch {
	case req.Distro != "" && req.Distro != "debian" && req.Distro != "void":
		return "", api.Errorf(api.CodeInvalid, "use --distro debian or --distro void", "unknown distro %q", req.Distro)
	case req.Distro == "void":
		if req.From != "" || req.Base {
			return "", api.Errorf(api.CodeInvalid, "a Void image is built from --rootfs-tar, --kernel, --initrd and --modules", "--distro void does not take --from or --base")
		}
		spec := image.VoidSpec{Name: req.Name, RootfsTar: req.RootfsTar, Kernel: req.Kernel, Initrd: req.Initrd, Modules: req.Modules}
		if spec.Name == "" {
			spec.Name = "void"
		}
		b := &image.Builder{Runner: e.runner}
		kver, err := b.CheckVoid(ctx, spec)
		if err != nil {
			return "", api.Errorf(api.CodeInvalid, "pass a Void rootfs tarball and a kernel, initramfs and modules directory of one release (see README, Void Linux)", "%v", err)
		}
		if err := e.checks.preflight(ctx, checksForDerive); err != nil {
			return "", api.Errorf(api.CodeUnavailable, "run `banger doctor` for the full list", "%v", err)
		}
		if err := e.checks.checkVoidSpace(spec); err != nil {
			return "", err
		}
		target = spec.Name
		run = func(ctx context.Context, stage stageFunc) (store.Image, error) {
			return e.buildVoid(ctx, spec, kver, req.Force, stage)
		}
	case req.From != "" || req.Provision != "":
		if err := validateDerive(req); err != nil {
			return "", err
		}
		base, err := e.getImage(ctx, req.From)
		if err != nil {
			return "", err
		}
		if err := e.checks.checkDeriveSpace(base); err != nil {
			return "", err
		}
		if err := e.checks.preflight(ctx, checksForDerive); err != nil {
			return "", api.Errorf(api.CodeUnavailable, "run `banger doctor` for the full list", "%v", err)
		}
		if target == "" {
			target = derivedName(req.From)
		}
		run = func(ctx context.Context, stage stageFunc) (store.Image, error) { return e.deriveImage(ctx, req, stage) }
	default:
		spec := image.AgentSpec(e.cfg.Image.Suite, e.cfg.Image.Mirror, e.cfg.Image.SecurityMirror)
		checks := checksForAgentBuild
		if req.Base {
			spec = image.DefaultSpec(e.cfg.Image.Suite, e.cfg.Image.Mirror, e.cfg.Image.SecurityMirror)
			checks = checksForBuild
		}
		if req.Name != "" {
			spec.Name = req.Name
		}
		// A rebuild of unchanged inputs does nothing, so it needs no tools.
		if img, err := e.store.GetImage(ctx, spec.Name); err != nil || img.Fingerprint != spec.Fingerprint() || req.Force {
			if err := e.checks.preflight(ctx, checks); err != nil {
				return "", api.Errorf(api.CodeUnavailable, "run `banger doctor` for the full list", "%v", err)
			}
			if err := e.checks.checkBuildSpace(req.Base); err != nil {
				return "", err
			}
		}
		target = spec.Name
		run = func(ctx context.Context, stage stageFunc) (store.Image, error) {
			return e.buildImage(ctx, spec, req.Force, stage)
		}
	}
	if !e.builds.acquire() {
		return "", api.Errorf(api.CodeConflict, "wait for it (`banger op watch`)", "an image build is already running")
	}
	id, err := e.ops.start(ctx, kind, target, func(ctx context.Context, stage stageFunc) (any, error) {
		defer e.builds.release()
		img, err := run(ctx, stage)
		if err != nil {
			return nil, err
		}
		if img.Default && req.Distro != "void" && e.cfg.Image.ReadySnapshot {
			// New VMs of the default image restore from its ready
			// snapshot; without one they boot cold, so a failure here
			// costs speed, not the build.
			if err := e.vms.makeReadySnapshot(ctx, stage, img); err != nil {
				e.log.Warn("no ready snapshot for image; its VMs boot cold", "image", img.Name, "err", err)
			}
			if fresh, err := e.store.GetImage(ctx, img.ID); err == nil {
				img = fresh
			}
		}
		return e.imageView(ctx, img, false), nil
	})
	if err != nil {
		e.builds.release()
	}
	return id, err
}

// validateDerive checks a --from/--provision request before anything runs.
func validateDerive(req api.BuildImageRequest) error {
	switch {
	case req.From == "":
		return api.Errorf(api.CodeInvalid, "name the image to start from: `banger image build --from BASE --provision SCRIPT`", "--provision needs --from")
	case req.Provision == "":
		return api.Errorf(api.CodeInvalid, "give the script that provisions the image: `--provision SCRIPT`", "--from needs --provision")
	case req.Base:
		return api.Errorf(api.CodeInvalid, "drop --base: the base of a derived image is --from", "--base and --from do not go together")
	case len(req.Provision) > maxProvisionScript:
		return api.Errorf(api.CodeInvalid, "keep the script small and have it fetch what it needs", "the provisioning script is %d bytes; the limit is %d", len(req.Provision), maxProvisionScript)
	case req.Egress != "" && req.Egress != config.EgressAll && req.Egress != config.EgressNone:
		return api.Errorf(api.CodeInvalid, `use "all" or "none"`, "unknown egress %q", req.Egress)
	}
	return nil
}

func (e *imageEngine) buildImage(ctx context.Context, spec image.Spec, force bool, stage stageFunc) (store.Image, error) {
	existing, done, err := e.checkRebuild(ctx, spec.Name, spec.Fingerprint(), force, stage)
	if err != nil || done {
		return existing, err
	}
	imgID := newID(4)
	outDir := e.layout.ImageDir(imgID)
	workDir := filepath.Join(e.layout.CacheDir, "build-"+imgID)
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(outDir)
			os.RemoveAll(workDir)
		}
	}()
	logf, err := os.OpenFile(filepath.Join(e.layout.LogDir, "image-build-"+imgID+".log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return store.Image{}, err
	}
	defer logf.Close()
	b := &image.Builder{Runner: e.runner, Log: logf}
	meta, err := b.Build(ctx, spec, workDir, outDir, image.StageFunc(stage))
	if err != nil {
		return store.Image{}, &opError{err: err, consoleTail: system.TailFile(logf.Name(), 3000), hint: "the build log is " + logf.Name()}
	}
	if err := stage("verify", func(ctx context.Context) error { return e.verifyImage(ctx, outDir, meta) }); err != nil {
		return store.Image{}, err
	}
	img, err := e.replaceAndRegister(ctx, existing, force, imgID, outDir, meta, stage)
	if err != nil {
		return store.Image{}, err
	}
	ok = true
	return img, nil
}

// buildVoid assembles a Void image from staged parts. It is not booted
// here: the parts are the user's, and `image verify` is the boot check.
func (e *imageEngine) buildVoid(ctx context.Context, spec image.VoidSpec, kver string, force bool, stage stageFunc) (store.Image, error) {
	var fp string
	err := stage("fingerprint", func(context.Context) error {
		var err error
		fp, err = image.VoidFingerprint(spec)
		return err
	})
	if err != nil {
		return store.Image{}, err
	}
	existing, done, err := e.checkRebuild(ctx, spec.Name, fp, force, func(string, func(context.Context) error) error { return nil })
	if err != nil || done {
		return existing, err
	}
	imgID := newID(4)
	outDir := e.layout.ImageDir(imgID)
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(outDir)
		}
	}()
	b := &image.Builder{Runner: e.runner}
	meta, err := b.BuildVoid(ctx, spec, kver, fp, filepath.Join(e.layout.CacheDir, "build-"+imgID), outDir, image.StageFunc(stage))
	if err != nil {
		return store.Image{}, err
	}
	img, err := e.replaceAndRegister(ctx, existing, force, imgID, outDir, meta, stage)
	if err != nil {
		return store.Image{}, err
	}
	ok = true
	return img, nil
}

// checkRebuild decides whether a build of name with fingerprint fp has
// work to do. Unchanged inputs are a no-op (done, and a "fingerprint"
// stage says so); changed inputs under a taken name are refused unless
// forced, and a forced rebuild of an image in use is refused.
func (e *imageEngine) checkRebuild(ctx context.Context, name, fp string, force bool, stage stageFunc) (existing store.Image, done bool, err error) {
	existing, err = e.store.GetImage(ctx, name)
	switch {
	case err == nil && existing.Fingerprint == fp && !force:
		_ = stage("fingerprint", func(context.Context) error { return nil })
		return existing, true, nil
	case err == nil && existing.Fingerprint != fp && !force:
		return store.Image{}, false, api.Errorf(api.CodeConflict,
			fmt.Sprintf("delete it first (`banger image delete %s`), build under another name (`--name`), or replace it (`--force`)", name),
			"image %q exists and was built from different inputs", name)
	case err == nil && force:
		if vms, _ := e.store.VMsUsingImage(ctx, existing.ID); len(vms) > 0 {
			return store.Image{}, false, api.Errorf(api.CodeConflict, "delete those VMs first", "image %q is used by %d VM(s)", name, len(vms))
		}
		return existing, false, nil
	case errors.Is(err, store.ErrNotFound):
		return store.Image{}, false, nil
	}
	return store.Image{}, false, err
}

// replaceAndRegister records a finished image directory, first removing
// the image it replaces when the build was forced.
func (e *imageEngine) replaceAndRegister(ctx context.Context, existing store.Image, force bool, imgID, outDir string, meta image.Meta, stage stageFunc) (store.Image, error) {
	var img store.Image
	err := stage("register", func(ctx context.Context) error {
		if force && existing.ID != "" {
			if err := e.removeImage(ctx, existing); err != nil {
				return err
			}
		}
		var rerr error
		img, rerr = e.registerImage(ctx, imgID, outDir, meta)
		return rerr
	})
	return img, err
}

// verifyImage boots a fresh image once in a throwaway VM and checks the
// guest runs the kernel the image carries, with sshd up.
func (e *imageEngine) verifyImage(ctx context.Context, imgDir string, meta image.Meta) error {
	dir := filepath.Join(e.layout.VMsDir, "v"+newID(3))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	priv, _, err := sshkeys.GenerateEd25519()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, fileHostKey), priv, 0o600); err != nil {
		return err
	}
	img := store.Image{Dir: imgDir}
	vm := store.VM{ID: filepath.Base(dir), Name: "verify", Dir: dir, CPUs: 2, MemoryMiB: 1024, Egress: "none"}
	if _, err := e.runner.Run(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-b", filepath.Join(imgDir, image.FileRootfs), "-F", "raw", filepath.Join(dir, paths.FileRootDisk)); err != nil {
		return err
	}
	if _, err := e.vms.makeWorkDisk(ctx, img, dir, 1<<30); err != nil {
		return err
	}
	vm.Accel = e.vms.accelFor(ctx, img).Accel
	var undo cleanup
	defer undo.run()
	noStages := func(_ string, fn func(ctx context.Context) error) error { return fn(ctx) }
	if _, err := e.vms.boot(ctx, &vm, img, noStages, &undo, false, false); err != nil {
		return err
	}
	defer e.vms.dropAgent(vm.ID)
	c := e.vms.cachedAgent(vm.ID)
	var out strings.Builder
	st, err := guestExec(ctx, c, api.ExecRequest{Argv: []string{"sh", "-c", "uname -r; systemctl is-active ssh"}}, guestOutputBuffer(&out, "verify output"), nil)
	if err != nil {
		return fmt.Errorf("exec in verify VM: %w", err)
	}
	got := strings.Fields(out.String())
	if st.Code != 0 || len(got) != 2 || got[0] != meta.KernelVersion || got[1] != "active" {
		return fmt.Errorf("verify boot: guest said %q (exit %d), want kernel %s and ssh active", out.String(), st.Code, meta.KernelVersion)
	}
	manifest, _ := os.ReadFile(filepath.Join(imgDir, image.FileManifest))
	if image.HasService(string(manifest), image.ServiceOpencode) {
		return verifyAgents(ctx, c)
	}
	return nil
}

// agentChecks is what an agent image must do in its verify boot: every
// agent prints its version, and opencode answers on guest port 4096.
const agentChecks = `set -e
for c in node opencode claude pi; do
  printf '%s ' "$c"; timeout 120 "$c" --version </dev/null 2>&1 | head -n1
done
for i in $(seq 1 240); do
  if curl -s -o /dev/null --max-time 3 http://127.0.0.1:4096/global/health; then echo "opencode :4096 ok"; exit 0; fi
  sleep 0.5
done
echo "opencode :4096 did not answer"; systemctl --no-pager status opencode | tail -n 5; exit 1`

func verifyAgents(ctx context.Context, c *agentclient.Client) error {
	var out strings.Builder
	req := api.ExecRequest{Argv: []string{"bash", "-c", agentChecks}, Env: map[string]string{"HOME": "/root", "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}}
	buf := guestOutputBuffer(&out, "agent check output")
	st, err := guestExec(ctx, c, req, buf, buf)
	if err != nil {
		return fmt.Errorf("exec in verify VM: %w", err)
	}
	if st.Code != 0 {
		return fmt.Errorf("verify agents: exit %d: %s", st.Code, strings.TrimSpace(out.String()))
	}
	return nil
}

func (e *imageEngine) imageView(ctx context.Context, img store.Image, withPackages bool) api.Image {
	out := api.Image{
		ID: img.ID, Name: img.Name, Default: img.Default, State: img.State, Fingerprint: img.Fingerprint,
		Suite: img.Suite, KernelVersion: img.KernelVersion, SizeBytes: img.SizeBytes, Dir: img.Dir, CreatedAt: img.CreatedAt,
		VerifyError: img.VerifyError,
	}
	if !img.VerifiedAt.IsZero() {
		t := img.VerifiedAt
		out.VerifiedAt = &t
	}
	if vms, err := e.store.VMsUsingImage(ctx, img.ID); err == nil {
		for _, vm := range vms {
			out.UsedBy = append(out.UsedBy, vm.Name)
		}
	}
	if img.ReadySnapshotID != "" {
		if s, err := e.store.GetSnapshot(ctx, img.ReadySnapshotID); err == nil {
			out.ReadySnapshot = s.Name
		}
	}
	if img.Manifest != "" {
		var m image.Manifest
		if json.Unmarshal([]byte(img.Manifest), &m) == nil {
			out.Services, out.From, out.Distro = m.Services, m.From, m.Distro
			if out.Distro == "" {
				out.Distro = "debian"
			}
			if withPackages {
				out.Packages, out.NPM = m.Packages, m.NPM
			}
		}
	}
	return out
}

func (e *imageEngine) getImage(ctx context.Context, name string) (store.Image, error) {
	img, err := e.store.GetImage(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return img, api.Errorf(api.CodeNotFound, "see `banger image list`", "no image named %q", name)
	}
	return img, err
}

// DeleteImage removes an image that no VM uses.
func (e *imageEngine) DeleteImage(ctx context.Context, name string) error {
	img, err := e.getImage(ctx, name)
	if err != nil {
		return err
	}
	return e.removeImage(ctx, img)
}

func (e *imageEngine) removeImage(ctx context.Context, img store.Image) error {
	if vms, _ := e.store.VMsUsingImage(ctx, img.ID); len(vms) > 0 {
		names := make([]string, 0, len(vms))
		for _, v := range vms {
			names = append(names, v.Name)
		}
		return api.Errorf(api.CodeConflict, "delete those VMs first (`banger vm delete NAME`)", "image %q is used by VM(s): %s", img.Name, strings.Join(names, ", "))
	}
	// Its ready snapshot goes with it; other snapshots of it refuse.
	if err := e.vms.dropSnapshotsOf(ctx, img); err != nil {
		return err
	}
	if err := e.store.DeleteImage(ctx, img.ID); err != nil {
		if errors.Is(err, store.ErrInUse) {
			return api.Errorf(api.CodeConflict, "delete those VMs and snapshots first (`banger vm snapshot list`)", "image %q is in use: %v", img.Name, err)
		}
		return err
	}
	return os.RemoveAll(img.Dir)
}

// ExportImage copies an image directory to dir (reflinks where possible),
// in the layout `image import` reads.
func (e *imageEngine) ExportImage(ctx context.Context, name, dir string) error {
	img, err := e.getImage(ctx, name)
	if err != nil {
		return err
	}
	if !filepath.IsAbs(dir) {
		return api.Errorf(api.CodeInvalid, "pass an absolute path", "export path %q is relative", dir)
	}
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		return api.Errorf(api.CodeConflict, "choose an empty or new directory", "export directory %s is not empty", dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create export dir: %w", err)
	}
	if err := copyImageDir(ctx, img.Dir, dir); err != nil {
		os.RemoveAll(dir)
		return fmt.Errorf("export image: %w", err)
	}
	return nil
}

// ImportImage registers a copy of an exported image directory.
func (e *imageEngine) ImportImage(ctx context.Context, src string) (store.Image, error) {
	if !filepath.IsAbs(src) {
		return store.Image{}, api.Errorf(api.CodeInvalid, "pass an absolute path", "import path %q is relative", src)
	}
	meta, err := image.ReadMeta(src)
	if err != nil {
		return store.Image{}, api.Errorf(api.CodeInvalid, "pass a directory written by `banger image export`", "%v", err)
	}
	if err := api.ValidateName("image", meta.Name); err != nil {
		return store.Image{}, err
	}
	if existing, err := e.store.GetImage(ctx, meta.Name); err == nil {
		if existing.Fingerprint == meta.Fingerprint {
			return existing, nil
		}
		return store.Image{}, api.Errorf(api.CodeConflict, "delete the existing image first", "an image named %q with other contents exists", meta.Name)
	}
	if err := e.checks.checkImportSpace(src); err != nil {
		return store.Image{}, err
	}
	id := newID(4)
	dir := e.layout.ImageDir(id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return store.Image{}, err
	}
	if err := copyImageDir(ctx, src, dir); err != nil {
		os.RemoveAll(dir)
		return store.Image{}, fmt.Errorf("import image: %w", err)
	}
	img, err := e.registerImage(ctx, id, dir, meta)
	if err != nil {
		os.RemoveAll(dir)
	}
	return img, err
}

// copyImageDir copies an image directory; see image.CopyImageDir for why
// it goes through an os.Root.
func copyImageDir(ctx context.Context, src, dst string) error {
	return image.CopyImageDir(ctx, src, dst)
}
