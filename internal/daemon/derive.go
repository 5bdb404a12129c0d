package daemon

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/sshkeys"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/tarx"
	"github.com/bangerdev/banger/internal/vmm"
)

// deriveRecipe versions how a derived image is made; bump it when the
// steps change what a derived image contains.
const deriveRecipe = "1"

// MaxProvisionScript caps a provisioning script: it travels in a JSON body.
const maxProvisionScript = 512 << 10

// deriveFingerprint names a derived image's inputs: its base (by
// fingerprint, so a rebuilt base makes a different derivation) and the
// script's bytes.
func deriveFingerprint(baseFP string, script []byte) string {
	h := sha256.New()
	sum := sha256.Sum256(script)
	fmt.Fprintf(h, "derive-recipe=%s\nbase=%s\nscript=%x\n", deriveRecipe, baseFP, sum)
	return hex.EncodeToString(h.Sum(nil))
}

// derivedName is the default name of an image derived from base.
func derivedName(base string) string {
	n := base + "-derived"
	if len(n) > 31 {
		n = strings.TrimRight(n[:31], "-")
	}
	return n
}

// deriveImage boots the base image in a throwaway VM, runs the script in
// it over SSH, powers it off cleanly and keeps its root disk, flattened,
// as a new image: kernel and initrd are the base's, the package list is
// read back from the guest and /root becomes the new work seed.
func (e *imageEngine) deriveImage(ctx context.Context, req api.BuildImageRequest, stage stageFunc) (store.Image, error) {
	base, err := e.getImage(ctx, req.From)
	if err != nil {
		return store.Image{}, err
	}
	script := []byte(req.Provision)
	name := req.Name
	if name == "" {
		name = derivedName(base.Name)
	}
	fp := deriveFingerprint(base.Fingerprint, script)
	existing, done, err := e.checkRebuild(ctx, name, fp, req.Force, stage)
	if err != nil || done {
		return existing, err
	}

	imgID := newID(4)
	outDir := e.layout.ImageDir(imgID)
	vmDir := filepath.Join(e.layout.VMsDir, "p"+newID(3))
	ok := false
	defer func() {
		os.RemoveAll(vmDir)
		if !ok {
			os.RemoveAll(outDir)
		}
	}()
	logf, err := os.OpenFile(filepath.Join(e.layout.LogDir, "image-build-"+imgID+".log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return store.Image{}, err
	}
	defer logf.Close()
	fail := func(err error) (store.Image, error) {
		var oe *opError
		if errors.As(err, &oe) {
			return store.Image{}, err
		}
		return store.Image{}, &opError{err: err, consoleTail: system.TailFile(logf.Name(), 3000), hint: "the build log is " + logf.Name()}
	}

	egress := req.Egress
	if egress == "" {
		egress = e.cfg.VM.Egress
	}
	if egress == config.EgressAllow {
		// A provisioning VM has no row, so no gateway policy: its script
		// is the user's own, and gets the network as with egress all.
		egress = config.EgressAll
	}
	vm := store.VM{ID: filepath.Base(vmDir), Name: "provision", Dir: vmDir, CPUs: max(2, e.cfg.VM.CPUs), MemoryMiB: max(2048, e.cfg.VM.MemoryMiB), Egress: egress}
	var hostPub []byte
	err = stage("prepare", func(ctx context.Context) error {
		if err := os.MkdirAll(vmDir, 0o700); err != nil {
			return err
		}
		if err := os.MkdirAll(outDir, 0o755); err != nil {
			return fmt.Errorf("create image dir: %w", err)
		}
		priv, pub, err := sshkeys.GenerateEd25519()
		if err != nil {
			return err
		}
		hostPub = pub
		if err := os.WriteFile(filepath.Join(vmDir, fileHostKey), priv, 0o600); err != nil {
			return err
		}
		if _, err := e.runner.Run(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-b", filepath.Join(base.Dir, image.FileRootfs), "-F", "raw", filepath.Join(vmDir, paths.FileRootDisk)); err != nil {
			return fmt.Errorf("create root overlay: %w", err)
		}
		if _, err := e.vms.makeWorkDisk(ctx, base, vmDir, 4<<30); err != nil {
			return err
		}
		vm.SSHPort, err = freeLocalPort()
		return err
	})
	if err != nil {
		return fail(err)
	}
	vm.Accel = e.vms.accelFor(ctx, base).Accel
	var undo cleanup
	defer undo.run()
	proc, err := e.vms.boot(ctx, &vm, base, stage, &undo, false, false)
	if err != nil {
		return fail(err)
	}
	defer e.vms.dropAgent(vm.ID)

	err = stage("provision", func(ctx context.Context) error {
		// The script's output is the guest's to choose: the log file
		// keeps its first part, watchers still see all of it live.
		capped := &system.CappedWriter{W: logf, Max: maxBuildLog, Note: "\n[banger: build log cut here; limit reached]\n"}
		out := io.MultiWriter(capped, stageOutput(ctx))
		return e.runProvision(ctx, vm.SSHPort, hostPub, script, out)
	})
	if err != nil {
		return fail(err)
	}
	var manifest image.Manifest
	if b := []byte(base.Manifest); len(b) > 0 {
		_ = json.Unmarshal(b, &manifest)
	}
	err = stage("manifest", func(ctx context.Context) error {
		var pkgs bytes.Buffer
		if err := e.guestRun(ctx, vm.ID, guestOutputBuffer(&pkgs, "package list"), "dpkg-query", "-W", "-f", "${db:Status-Abbrev}\t${Package}\t${Version}\n"); err != nil {
			return fmt.Errorf("read the package list back: %w", err)
		}
		manifest.Packages = parseDpkgQuery(pkgs.String())
		manifest.Fingerprint = fp
		manifest.From = base.Name
		manifest.ProvisionSHA256 = fmt.Sprintf("%x", sha256.Sum256(script))
		// /root becomes the new work seed: what the script set up for
		// root (dotfiles, tool config) reaches every VM of the image.
		// Keys and history are per VM, never part of an image.
		pr, pw := io.Pipe()
		go func() {
			pw.CloseWithError(e.guestRun(ctx, vm.ID, pw, "tar", "-C", "/root", "--exclude=./.ssh/authorized_keys",
				"--exclude=./.bash_history", "--exclude=./"+image.FileWorkSeedMark, "--exclude=./lost+found", "-cf", "-", "."))
		}()
		if err := e.receiveRootTar(ctx, pr, filepath.Join(outDir, image.DirWorkSeed)); err != nil {
			pr.CloseWithError(err)
			return err
		}
		return image.WriteManifest(outDir, manifest)
	})
	if err != nil {
		return fail(err)
	}
	err = stage("shutdown", func(ctx context.Context) error {
		// The root disk becomes the image, so it must be consistent on
		// disk: flush, have the kernel remount every filesystem read-only
		// (SysRq u) and check it did, then power off. Once / is read-only
		// a VMM that does not exit by itself can be killed safely.
		if err := e.guestRun(ctx, vm.ID, io.Discard, "sh", "-c", freezeRootScript); err != nil {
			return fmt.Errorf("make the provisioning VM's root read-only: %w", err)
		}
		// Not politePoweroff: that looks the VM up by name, and this one
		// has no record.
		if err := e.guestRun(ctx, vm.ID, io.Discard, "systemctl", "poweroff", "--no-block"); err != nil {
			e.log.Warn("provisioning VM: poweroff request failed", "err", err)
		}
		e.vms.dropAgent(vm.ID)
		drv := e.vms.driverFor(vm)
		if !vmm.WaitGone(ctx, drv.Alive, proc, 60*time.Second) {
			e.log.Warn("provisioning VM did not power off within 60s; stopping it (its root is read-only)")
			if err := drv.Stop(ctx, vm.Dir, proc, true, 0); err != nil {
				return fmt.Errorf("stop the provisioning VM: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return fail(err)
	}
	meta := image.Meta{Name: name, Fingerprint: fp, Suite: base.Suite, KernelVersion: base.KernelVersion, From: base.Name}
	err = stage("rootfs", func(ctx context.Context) error {
		// Flatten the overlay into a new raw rootfs; the base stays as it
		// was and the new image no longer depends on it.
		dst := filepath.Join(outDir, image.FileRootfs)
		if err := flattenRootDisk(ctx, e.runner, filepath.Join(vmDir, paths.FileRootDisk), filepath.Join(base.Dir, image.FileRootfs), dst); err != nil {
			return fmt.Errorf("flatten root disk: %w", err)
		}
		st, err := os.Stat(dst)
		if err != nil {
			return err
		}
		meta.SizeBytes = st.Size()
		for _, f := range []string{image.FileKernel, image.FileInitrd, image.FileVmlinux} {
			src := filepath.Join(base.Dir, f)
			if _, err := os.Stat(src); err != nil {
				continue
			}
			if err := system.CloneFile(ctx, src, filepath.Join(outDir, f)); err != nil {
				return fmt.Errorf("copy %s from %s: %w", f, base.Name, err)
			}
		}
		if bm, err := image.ReadMeta(base.Dir); err == nil {
			meta.Spec = bm.Spec
		}
		meta.Spec.Name = name
		return image.WriteMeta(outDir, meta)
	})
	if err != nil {
		return fail(err)
	}
	if err := stage("verify", func(ctx context.Context) error { return e.verifyImage(ctx, outDir, meta) }); err != nil {
		return store.Image{}, err
	}
	img, err := e.replaceAndRegister(ctx, existing, req.Force, imgID, outDir, meta, stage)
	if err != nil {
		return store.Image{}, err
	}
	ok = true
	return img, nil
}

// flattenRootDisk writes the provisioning VM's overlay, read over its
// base image's rootfs, into dst as a raw disk. The overlay is a qcow2
// file the VM's QEMU (an unprivileged user, possibly compromised) could
// write, header included (checkOverlay); the convert gives the backing
// explicitly (--image-opts), so it never opens what the header names.
func flattenRootDisk(ctx context.Context, r system.Runner, overlay, backing, dst string) error {
	if err := checkOverlay(overlay, vmm.Layer{Path: backing, Format: "raw"}); err != nil {
		return err
	}
	esc := func(p string) string { return strings.ReplaceAll(p, ",", ",,") }
	opts := "driver=qcow2,file.driver=file,file.filename=" + esc(overlay) +
		",backing.driver=raw,backing.file.driver=file,backing.file.filename=" + esc(backing)
	if _, err := r.Run(ctx, "qemu-img", "convert", "-q", "--image-opts", opts, "-O", "raw", dst); err != nil {
		return err
	}
	return nil
}

// extractWorkSeed unpacks the provisioning VM's /root (a tar stream the
// guest wrote, so hostile) into seed, a new directory. tarx confines every
// entry to seed through an os.Root: an entry that goes through a link the
// stream planted (.banger -> /etc/sudoers.d, then .banger/x) is refused,
// and links themselves are stored, never followed.
func extractWorkSeed(ctx context.Context, r io.Reader, seed string, max int64) error {
	// Mkdir, not MkdirAll: the seed directory is new and banger's own.
	if err := os.Mkdir(seed, 0o700); err != nil {
		return fmt.Errorf("copy /root back as the work seed: %w", err)
	}
	if _, err := tarx.Extract(ctx, r, seed, max); err != nil {
		return fmt.Errorf("copy /root back as the work seed: %w", err)
	}
	return nil
}

// freezeRootScript syncs, asks the kernel to remount all filesystems
// read-only (the emergency remount flushes the journal and marks them
// clean) and waits until / shows ro.
const freezeRootScript = `sync; echo u > /proc/sysrq-trigger
for i in $(seq 1 300); do
  awk '$2=="/"{o=$4} END{exit o !~ /^ro/}' /proc/mounts && exit 0
  sleep 0.1
done
echo "/ is still read-write" >&2; exit 1`

// runProvision runs script as root in the guest over SSH, with its output
// streamed to out. The host key is the one banger generated for this VM,
// so nothing is trusted on first use.
func (e *imageEngine) runProvision(ctx context.Context, port int, hostPub, script []byte, out io.Writer) error {
	keyPath, _, err := sshkeys.EnsureClientKey(e.layout.SSHDir)
	if err != nil {
		return err
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return err
	}
	signer, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		return fmt.Errorf("read banger's ssh key: %w", err)
	}
	hk, _, _, _, err := ssh.ParseAuthorizedKey(hostPub)
	if err != nil {
		return fmt.Errorf("parse the VM's host key: %w", err)
	}
	cfg := &ssh.ClientConfig{
		User:            "root",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.FixedHostKey(hk),
		Timeout:         10 * time.Second,
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	// The agent answers before sshd listens: retry the dial for a while.
	var client *ssh.Client
	deadline := time.Now().Add(90 * time.Second)
	for {
		client, err = dialSSH(ctx, addr, cfg)
		if err == nil {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("ssh to the provisioning VM: %w", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	defer client.Close()
	sess, err := client.NewSession()
	if err != nil {
		return fmt.Errorf("ssh session: %w", err)
	}
	defer sess.Close()
	sess.Stdin = bytes.NewReader(script)
	sess.Stdout, sess.Stderr = out, out
	// The script is copied to a file first so its own interpreter line
	// counts and it can read its stdin from nowhere.
	const run = `set -e; f=$(mktemp /tmp/banger-provision.XXXXXX); cat >"$f"; chmod 700 "$f"; ` +
		`export HOME=/root DEBIAN_FRONTEND=noninteractive PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin; ` +
		`cd /root; rc=0; "$f" </dev/null || rc=$?; rm -f "$f"; exit $rc`
	done := make(chan error, 1)
	go func() { done <- sess.Run(run) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		client.Close()
		return ctx.Err()
	}
	var ee *ssh.ExitError
	if errors.As(err, &ee) {
		return fmt.Errorf("provisioning script exited with status %d (its output is above)", ee.ExitStatus())
	}
	if err != nil {
		return fmt.Errorf("run provisioning script: %w", err)
	}
	return nil
}

func dialSSH(ctx context.Context, addr string, cfg *ssh.ClientConfig) (*ssh.Client, error) {
	var dl net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := dl.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return ssh.NewClient(c, chans, reqs), nil
}

// guestRun runs argv in a throwaway VM through its agent, stdout to out;
// a non-zero exit is an error carrying the command's stderr.
func (e *imageEngine) guestRun(ctx context.Context, vmID string, out io.Writer, argv ...string) error {
	c := e.vms.cachedAgent(vmID)
	if c == nil {
		return fmt.Errorf("no agent connection")
	}
	var stderr bytes.Buffer
	st, err := guestExec(ctx, c, api.ExecRequest{Argv: argv}, out, guestOutputBuffer(&stderr, argv[0]+" stderr"))
	if err != nil {
		return err
	}
	if st.Code != 0 {
		return fmt.Errorf("%s exited %d: %s", argv[0], st.Code, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// parseDpkgQuery reads `dpkg-query -W -f '${db:Status-Abbrev}\t${Package}\t${Version}\n'`
// and keeps installed packages.
func parseDpkgQuery(s string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		f := strings.Split(line, "\t")
		if len(f) != 3 || !strings.HasPrefix(f[0], "ii") {
			continue
		}
		out[f[1]] = f[2]
	}
	return out
}

// receiveRootTar unpacks the provisioning VM's /root tar into seed. The
// guest decides what it sends: the contents are capped by
// limits.guest_stream_mib and the stream stops before the disk runs low
// (the caller removes the half-made image directory).
func (e *imageEngine) receiveRootTar(ctx context.Context, r io.Reader, seed string) error {
	const op = "derive"
	if err := e.checks.checkFree(op, filepath.Dir(seed), 0); err != nil {
		return err
	}
	r = &system.GuardedReader{R: r, Guard: e.checks.spaceGuard(op, filepath.Dir(seed))}
	if err := extractWorkSeed(ctx, r, seed, e.checks.guestStreamMax()); err != nil {
		if errors.Is(err, tarx.ErrTooLarge) {
			err = fmt.Errorf("%w (limits.guest_stream_mib): %w", system.ErrTooLarge, err)
		}
		return streamLimitError(err)
	}
	return nil
}

// maxBuildLog bounds the provisioning output kept in a build log.
const maxBuildLog = 64 << 20

// maxGuestOutput bounds a guest command's output that the daemon keeps
// in memory (a package list, a verify check, stderr for an error).
const maxGuestOutput = 16 << 20

// guestOutputBuffer bounds w, an in-memory buffer of guest output.
func guestOutputBuffer(w io.Writer, what string) io.Writer {
	return &system.LimitedWriter{W: w, Max: maxGuestOutput, What: what}
}
