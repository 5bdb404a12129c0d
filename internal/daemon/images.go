package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/bangerdev/banger/internal/agentclient"
	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/mux"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/sshkeys"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/system"
)

// BuildImage validates a build request and runs the build as an operation.
func (d *Daemon) BuildImage(ctx context.Context, req api.BuildImageRequest) (string, error) {
	spec := image.AgentSpec(d.cfg.Image.Suite, d.cfg.Image.Mirror, d.cfg.Image.SecurityMirror)
	checks := checksForAgentBuild
	if req.Base {
		spec = image.DefaultSpec(d.cfg.Image.Suite, d.cfg.Image.Mirror, d.cfg.Image.SecurityMirror)
		checks = checksForBuild
	}
	if req.Name != "" {
		if err := api.ValidateName("image", req.Name); err != nil {
			return "", err
		}
		spec.Name = req.Name
	}
	if err := d.preflight(ctx, checks); err != nil {
		return "", api.Errorf(api.CodeUnavailable, "run `banger doctor` for the full list", "%v", err)
	}
	d.mu.Lock()
	if d.building {
		d.mu.Unlock()
		return "", api.Errorf(api.CodeConflict, "wait for it (`banger op watch`)", "an image build is already running")
	}
	d.building = true
	d.mu.Unlock()
	id, err := d.ops.start(ctx, "image.build", spec.Name, func(ctx context.Context, stage stageFunc) (any, error) {
		defer func() {
			d.mu.Lock()
			d.building = false
			d.mu.Unlock()
		}()
		img, err := d.buildImage(ctx, spec, req.Force, stage)
		if err != nil {
			return nil, err
		}
		return d.imageView(ctx, img, false), nil
	})
	if err != nil {
		d.mu.Lock()
		d.building = false
		d.mu.Unlock()
	}
	return id, err
}

func (d *Daemon) buildImage(ctx context.Context, spec image.Spec, force bool, stage stageFunc) (store.Image, error) {
	fp := spec.Fingerprint()
	existing, err := d.store.GetImage(ctx, spec.Name)
	switch {
	case err == nil && existing.Fingerprint == fp && !force:
		// Unchanged inputs: nothing to do, and say so as a stage.
		_ = stage("fingerprint", func(context.Context) error { return nil })
		return existing, nil
	case err == nil && existing.Fingerprint != fp:
		return store.Image{}, api.Errorf(api.CodeConflict,
			fmt.Sprintf("delete it first (`banger image delete %s`) or build under another name (`--name`)", spec.Name),
			"image %q exists and was built from different inputs", spec.Name)
	case err == nil && force:
		if vms, _ := d.store.VMsUsingImage(ctx, existing.ID); len(vms) > 0 {
			return store.Image{}, api.Errorf(api.CodeConflict, "delete those VMs first", "image %q is used by %d VM(s)", spec.Name, len(vms))
		}
	case !errors.Is(err, store.ErrNotFound):
		return store.Image{}, err
	}

	imgID := newID(4)
	outDir := d.layout.ImageDir(imgID)
	workDir := filepath.Join(d.layout.CacheDir, "build-"+imgID)
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(outDir)
			os.RemoveAll(workDir)
		}
	}()
	logf, err := os.OpenFile(filepath.Join(d.layout.LogDir, "image-build-"+imgID+".log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return store.Image{}, err
	}
	defer logf.Close()
	b := &image.Builder{Runner: d.runner, Log: logf}
	meta, err := b.Build(ctx, spec, workDir, outDir, image.StageFunc(stage))
	if err != nil {
		return store.Image{}, &opError{err: err, consoleTail: system.TailFile(logf.Name(), 3000), hint: "the build log is " + logf.Name()}
	}
	if err := stage("verify", func(ctx context.Context) error { return d.verifyImage(ctx, outDir, meta) }); err != nil {
		return store.Image{}, err
	}
	var img store.Image
	err = stage("register", func(ctx context.Context) error {
		if force && existing.ID != "" {
			if err := d.removeImage(ctx, existing); err != nil {
				return err
			}
		}
		var rerr error
		img, rerr = d.registerImage(ctx, imgID, outDir, meta)
		return rerr
	})
	if err != nil {
		return store.Image{}, err
	}
	ok = true
	return img, nil
}

// verifyImage boots a fresh image once in a throwaway VM and checks the
// guest runs the kernel the image carries, with sshd up.
func (d *Daemon) verifyImage(ctx context.Context, imgDir string, meta image.Meta) error {
	dir := filepath.Join(d.layout.VMsDir, "v"+newID(3))
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
	if _, err := d.runner.Run(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-b", filepath.Join(imgDir, image.FileRootfs), "-F", "raw", filepath.Join(dir, paths.FileRootDisk)); err != nil {
		return err
	}
	if _, err := d.makeWorkDisk(ctx, img, dir, 1<<30); err != nil {
		return err
	}
	vm.Accel = d.accelFor(ctx, img).Accel
	var undo cleanup
	defer undo.run()
	noStages := func(_ string, fn func(ctx context.Context) error) error { return fn(ctx) }
	if _, err := d.boot(ctx, &vm, img, noStages, &undo, false, false); err != nil {
		return err
	}
	defer d.dropAgent(vm.ID)
	d.mu.Lock()
	c := d.agents[vm.ID]
	d.mu.Unlock()
	conn, err := c.Exec(ctx, api.ExecRequest{Argv: []string{"sh", "-c", "uname -r; systemctl is-active ssh"}})
	if err != nil {
		return fmt.Errorf("exec in verify VM: %w", err)
	}
	defer conn.Close()
	var out strings.Builder
	st, err := mux.RunExec(ctx, conn, nil, &out, io.Discard, nil, nil)
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
	conn, err := c.Exec(ctx, api.ExecRequest{Argv: []string{"bash", "-c", agentChecks}, Env: map[string]string{"HOME": "/root", "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}})
	if err != nil {
		return fmt.Errorf("exec in verify VM: %w", err)
	}
	defer conn.Close()
	var out strings.Builder
	st, err := mux.RunExec(ctx, conn, nil, &out, &out, nil, nil)
	if err != nil {
		return fmt.Errorf("exec in verify VM: %w", err)
	}
	if st.Code != 0 {
		return fmt.Errorf("verify agents: exit %d: %s", st.Code, strings.TrimSpace(out.String()))
	}
	return nil
}

func (d *Daemon) imageView(ctx context.Context, img store.Image, withPackages bool) api.Image {
	out := api.Image{
		ID: img.ID, Name: img.Name, Default: img.Default, State: img.State, Fingerprint: img.Fingerprint,
		Suite: img.Suite, KernelVersion: img.KernelVersion, SizeBytes: img.SizeBytes, Dir: img.Dir, CreatedAt: img.CreatedAt,
		VerifyError: img.VerifyError,
	}
	if !img.VerifiedAt.IsZero() {
		t := img.VerifiedAt
		out.VerifiedAt = &t
	}
	if vms, err := d.store.VMsUsingImage(ctx, img.ID); err == nil {
		for _, vm := range vms {
			out.UsedBy = append(out.UsedBy, vm.Name)
		}
	}
	if img.Manifest != "" {
		var m image.Manifest
		if json.Unmarshal([]byte(img.Manifest), &m) == nil {
			out.Services = m.Services
			if withPackages {
				out.Packages, out.NPM = m.Packages, m.NPM
			}
		}
	}
	return out
}

func (d *Daemon) getImage(ctx context.Context, name string) (store.Image, error) {
	img, err := d.store.GetImage(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return img, api.Errorf(api.CodeNotFound, "see `banger image list`", "no image named %q", name)
	}
	return img, err
}

// DeleteImage removes an image that no VM uses.
func (d *Daemon) DeleteImage(ctx context.Context, name string) error {
	img, err := d.getImage(ctx, name)
	if err != nil {
		return err
	}
	return d.removeImage(ctx, img)
}

func (d *Daemon) removeImage(ctx context.Context, img store.Image) error {
	if vms, _ := d.store.VMsUsingImage(ctx, img.ID); len(vms) > 0 {
		names := make([]string, 0, len(vms))
		for _, v := range vms {
			names = append(names, v.Name)
		}
		return api.Errorf(api.CodeConflict, "delete those VMs first (`banger vm delete NAME`)", "image %q is used by VM(s): %s", img.Name, strings.Join(names, ", "))
	}
	if err := d.store.DeleteImage(ctx, img.ID); err != nil {
		if errors.Is(err, store.ErrInUse) {
			return api.Errorf(api.CodeConflict, "delete those VMs first", "image %q is in use", img.Name)
		}
		return err
	}
	return os.RemoveAll(img.Dir)
}

// ExportImage copies an image directory to dir (reflinks where possible),
// in the layout `image import` reads.
func (d *Daemon) ExportImage(ctx context.Context, name, dir string) error {
	img, err := d.getImage(ctx, name)
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
func (d *Daemon) ImportImage(ctx context.Context, src string) (store.Image, error) {
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
	if existing, err := d.store.GetImage(ctx, meta.Name); err == nil {
		if existing.Fingerprint == meta.Fingerprint {
			return existing, nil
		}
		return store.Image{}, api.Errorf(api.CodeConflict, "delete the existing image first", "an image named %q with other contents exists", meta.Name)
	}
	id := newID(4)
	dir := d.layout.ImageDir(id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return store.Image{}, err
	}
	if err := copyImageDir(ctx, src, dir); err != nil {
		os.RemoveAll(dir)
		return store.Image{}, fmt.Errorf("import image: %w", err)
	}
	img, err := d.registerImage(ctx, id, dir, meta)
	if err != nil {
		os.RemoveAll(dir)
	}
	return img, err
}

func copyImageDir(ctx context.Context, src, dst string) error {
	for _, f := range []string{image.FileRootfs, image.FileKernel, image.FileInitrd, image.FileVmlinux, image.FileManifest, image.FileMeta} {
		if _, err := os.Stat(filepath.Join(src, f)); errors.Is(err, os.ErrNotExist) && (f == image.FileVmlinux || f == image.FileInitrd) {
			continue
		}
		if err := system.CloneFile(ctx, filepath.Join(src, f), filepath.Join(dst, f)); err != nil {
			return fmt.Errorf("copy %s: %w", f, err)
		}
	}
	if dirExists(filepath.Join(src, image.DirWorkSeed)) {
		return image.CopyTree(filepath.Join(src, image.DirWorkSeed), filepath.Join(dst, image.DirWorkSeed))
	}
	return nil
}
