package daemon

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/system"
)

func TestValidateDerive(t *testing.T) {
	ok := api.BuildImageRequest{From: "base", Provision: "echo hi\n"}
	if err := validateDerive(ok); err != nil {
		t.Fatalf("valid request refused: %v", err)
	}
	for want, req := range map[string]api.BuildImageRequest{
		"--provision needs --from":   {Provision: "x"},
		"--from needs --provision":   {From: "base"},
		"do not go together":         {From: "base", Provision: "x", Base: true},
		"the limit is":               {From: "base", Provision: strings.Repeat("x", maxProvisionScript+1)},
		`unknown egress "sometimes"`: {From: "base", Provision: "x", Egress: "sometimes"},
	} {
		err := validateDerive(req)
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Code != api.CodeInvalid || !strings.Contains(ae.Message, want) || ae.Hint == "" {
			t.Errorf("%+v: got %v, want an invalid-request error with %q and a hint", req, err, want)
		}
	}
}

func TestDeriveFingerprintAndName(t *testing.T) {
	a := deriveFingerprint("base1", []byte("echo a"))
	if a != deriveFingerprint("base1", []byte("echo a")) {
		t.Fatal("fingerprint not stable")
	}
	if a == deriveFingerprint("base2", []byte("echo a")) || a == deriveFingerprint("base1", []byte("echo b")) {
		t.Fatal("fingerprint ignores an input")
	}
	if n := derivedName("debian-bookworm-agents"); n != "debian-bookworm-agents-derived" {
		t.Errorf("derivedName = %q", n)
	}
	long := derivedName(strings.Repeat("a", 30))
	if err := api.ValidateName("image", long); err != nil {
		t.Errorf("derivedName of a long name is invalid: %v", err)
	}
}

func TestParseDpkgQuery(t *testing.T) {
	got := parseDpkgQuery("ii \tgit\t1:2.39.5-0+deb12u1\nrc \told\t1.0\nii \tbash\t5.2.15-2+b7\ngarbage\n")
	if len(got) != 2 || got["git"] != "1:2.39.5-0+deb12u1" || got["bash"] != "5.2.15-2+b7" {
		t.Errorf("parseDpkgQuery = %v", got)
	}
}

func TestCheckRebuild(t *testing.T) {
	ctx := context.Background()
	d := testDaemon(t, nil)
	d.layout = paths.Layout{ImagesDir: t.TempDir()}
	if _, err := d.imageEngine().registerImage(ctx, "i1", t.TempDir(), image.Meta{Name: "img", Fingerprint: "fp1"}); err != nil {
		t.Fatal(err)
	}
	var stages []string
	stage := func(name string, fn func(context.Context) error) error { stages = append(stages, name); return fn(ctx) }

	if _, done, err := d.imageEngine().checkRebuild(ctx, "img", "fp1", false, stage); !done || err != nil || strings.Join(stages, ",") != "fingerprint" {
		t.Errorf("unchanged inputs: done=%v err=%v stages=%v", done, err, stages)
	}
	if _, done, err := d.imageEngine().checkRebuild(ctx, "img", "fp2", false, stage); done || err == nil || !strings.Contains(err.Error(), "different inputs") {
		t.Errorf("changed inputs without --force: done=%v err=%v", done, err)
	}
	if ex, done, err := d.imageEngine().checkRebuild(ctx, "img", "fp2", true, stage); done || err != nil || ex.ID != "i1" {
		t.Errorf("changed inputs with --force: done=%v err=%v existing=%+v", done, err, ex)
	}
	if _, done, err := d.imageEngine().checkRebuild(ctx, "new", "fp", false, stage); done || err != nil {
		t.Errorf("new name: done=%v err=%v", done, err)
	}
	img, _ := d.store.GetImage(ctx, "img")
	vm := store.VM{Name: "user", ImageID: img.ID}
	if err := d.store.CreateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	if _, _, err := d.imageEngine().checkRebuild(ctx, "img", "fp1", true, stage); err == nil || !strings.Contains(err.Error(), "used by 1 VM") {
		t.Errorf("forced rebuild of an image in use: %v", err)
	}
}

func TestStageWriterPublishesWholeLines(t *testing.T) {
	var got []string
	w := &stageWriter{publish: func(s string) { got = append(got, s) }}
	w.Write([]byte("one\ntw"))
	w.Write([]byte("o\nthree"))
	w.flush()
	if strings.Join(got, "|") != "one\n|two\n|three\n" {
		t.Errorf("published %q", got)
	}
	got = nil
	w.Write([]byte(strings.Repeat("x", maxPending+1)))
	if len(got) != 1 || len(got[0]) != maxPending+2 {
		t.Errorf("an over-long line should be cut, got %d pieces", len(got))
	}
	if stageOutput(context.Background()) == nil {
		t.Error("stageOutput outside a stage must discard, not be nil")
	}
}

// A provisioning VM's QEMU can write its root overlay, header included.
// One that points the header's backing file (or an external data file)
// at a host file would have the daemon read that file into the derived
// image: flattenRootDisk refuses, and a genuine overlay still flattens.
func TestFlattenRootDiskRefusesRewrittenHeader(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed")
	}
	ctx := context.Background()
	r := system.Exec{}
	dir := t.TempDir()
	base := filepath.Join(dir, "dir,with,commas", "rootfs.ext4")
	secret := filepath.Join(dir, "shadow")
	mkdirs(t, filepath.Dir(base))
	write := func(p, content string) {
		t.Helper()
		b := make([]byte, 1<<20)
		copy(b, content)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(base, "BASE-ROOTFS")
	write(secret, "root:SECRET-HASH")
	qimg := func(args ...string) {
		t.Helper()
		if out, err := r.Run(ctx, "qemu-img", args...); err != nil {
			t.Fatalf("qemu-img %v: %v %s", args, err, out)
		}
	}
	overlay := func(name string) string {
		p := filepath.Join(dir, name)
		qimg("create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", p)
		return p
	}

	good := overlay("good.qcow2")
	dst := filepath.Join(dir, "good.raw")
	if err := flattenRootDisk(ctx, r, good, base, dst); err != nil {
		t.Fatalf("genuine overlay refused: %v", err)
	}
	if b, _ := os.ReadFile(dst); !bytes.HasPrefix(b, []byte("BASE-ROOTFS")) {
		t.Error("flattened genuine overlay lacks the base's content")
	}

	rebased := overlay("rebased.qcow2")
	qimg("rebase", "-q", "-u", "-b", secret, "-F", "raw", rebased)
	wrongFmt := overlay("wrongfmt.qcow2")
	qimg("rebase", "-q", "-u", "-b", base, "-F", "qcow2", wrongFmt)
	dataFile := filepath.Join(dir, "datafile.qcow2")
	qimg("create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", "-o", "data_file="+filepath.Join(dir, "scratch"), dataFile)
	rawAsQcow := filepath.Join(dir, "raw.qcow2")
	write(rawAsQcow, "not a qcow2")
	for name, p := range map[string]string{"backing rewritten": rebased, "backing format": wrongFmt, "data file": dataFile, "not qcow2": rawAsQcow} {
		out := filepath.Join(dir, "out-"+filepath.Base(p))
		err := flattenRootDisk(ctx, r, p, base, out)
		if err == nil {
			t.Errorf("%s: overlay accepted", name)
		}
		t.Logf("%s: %v", name, err)
		if b, _ := os.ReadFile(out); bytes.Contains(b, []byte("SECRET-HASH")) {
			t.Errorf("%s: host file read into the image", name)
		}
	}
}
