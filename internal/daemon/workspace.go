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
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentclient"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/workspace"
)

// checkWorkspace resolves the repository of req and checks the options
// against it: everything a prepare can refuse before it touches the VM.
func (d *Daemon) checkWorkspace(ctx context.Context, req api.WorkspaceRequest) (workspace.Repo, workspace.Options, error) {
	opts := workspace.Options{Mode: req.Mode, Branch: req.Branch, From: req.From}
	if err := opts.Validate(); err != nil {
		return workspace.Repo{}, opts, err
	}
	if !filepath.IsAbs(req.Path) {
		return workspace.Repo{}, opts, api.Errorf(api.CodeInvalid, "pass an absolute path (the CLI does this for you)",
			"workspace path %q is not absolute", req.Path)
	}
	repo, err := workspace.Resolve(ctx, d.runner, req.Path)
	if err != nil {
		return repo, opts, err
	}
	if err := workspace.Check(ctx, d.runner, repo, opts); err != nil {
		return repo, opts, err
	}
	return repo, opts, nil
}

// ResolveWorkspace checks a workspace request without a VM, for `banger
// vm run`, which must refuse a bad repository before it creates one.
func (d *Daemon) ResolveWorkspace(ctx context.Context, req api.WorkspaceRequest) (api.ResolvedRepo, error) {
	repo, opts, err := d.checkWorkspace(ctx, req)
	if err != nil {
		return api.ResolvedRepo{}, err
	}
	return api.ResolvedRepo{Root: repo.Root, Branch: repo.Branch, Head: repo.Head, Mode: opts.EffectiveMode()}, nil
}

// runningVM loads a VM that must be running for what the caller does.
func (d *Daemon) runningVM(ctx context.Context, name, doing string) (store.VM, error) {
	vm, err := d.getVM(ctx, name)
	if err != nil {
		return vm, err
	}
	if vm.State != api.VMRunning {
		return vm, api.Errorf(api.CodeConflict, fmt.Sprintf("start it with `banger vm start %s`", vm.Name),
			"cannot %s: VM %q is %s", doing, vm.Name, vm.State)
	}
	return vm, nil
}

// PrepareWorkspace validates at once and runs the prepare as an
// operation with the stages resolve, bundle, transfer, clone, overlay and
// (with --branch) branch.
func (d *Daemon) PrepareWorkspace(ctx context.Context, name string, req api.WorkspaceRequest) (string, error) {
	if _, err := d.useVM(ctx, name); err != nil {
		return "", err
	}
	vm, err := d.runningVM(ctx, name, "prepare a workspace")
	if err != nil {
		return "", err
	}
	if _, _, err := d.checkWorkspace(ctx, req); err != nil {
		return "", err
	}
	return d.ops.start(ctx, store.OpKindWorkspacePrepare, vm.Name, func(ctx context.Context, stage stageFunc) (any, error) {
		return d.prepareWorkspace(ctx, vm.Name, req, stage)
	})
}

func (d *Daemon) prepareWorkspace(ctx context.Context, name string, req api.WorkspaceRequest, stage stageFunc) (*api.Workspace, error) {
	// Under the VM lock: a stop or delete waits for the prepare instead
	// of pulling the VM out from under it.
	unlock := d.lockVM(name)
	defer unlock()
	vm, err := d.runningVM(ctx, name, "prepare a workspace")
	if err != nil {
		return nil, err
	}
	var (
		ws   *workspace.Workspace
		info = &api.Workspace{Dir: workspace.GuestDir, PreparedAt: time.Now().UTC()}
	)
	var (
		repo workspace.Repo
		opts workspace.Options
	)
	if err := stage(workspace.StageResolve, func(ctx context.Context) error {
		var err error
		repo, opts, err = d.checkWorkspace(ctx, req)
		if err != nil || opts.EffectiveMode() == workspace.ModeBundle {
			return err
		}
		// full_copy has no bundle stage: its snapshot is the tar.
		ws, err = workspace.Prepare(ctx, d.runner, repo, opts)
		return err
	}); err != nil {
		return nil, err
	}
	// ws is set by now unless a stage failed; Close covers both modes.
	defer func() {
		if ws != nil {
			ws.Close()
		}
	}()

	// The bundle streams to the guest while git writes it, and is kept
	// in a file on the host too: the pack index the guest installs with
	// it (see workspace/pack.go) is computed from that file right after.
	var bundleFile string
	if opts.EffectiveMode() == workspace.ModeBundle {
		// The snapshot: the file list, the staged tree as a commit and
		// the refs the bundle will carry, in a scratch repository.
		if err := stage(workspace.StageBundle, func(ctx context.Context) error {
			var err error
			if ws, err = workspace.Prepare(ctx, d.runner, repo, opts); err != nil {
				return err
			}
			f, err := os.CreateTemp(d.layout.CacheDir, "workspace-*.bundle")
			if err != nil {
				return fmt.Errorf("create bundle file: %w", err)
			}
			bundleFile = f.Name()
			f.Close()
			info.Tips, err = ws.Tips(ctx)
			return err
		}); err != nil {
			if bundleFile != "" {
				os.Remove(bundleFile)
			}
			return nil, err
		}
		defer os.Remove(bundleFile)
	}
	info.Source, info.Mode = ws.Repo.Root, ws.Plan.Mode
	info.Branch, info.Head, info.Base, info.GuestBranch = ws.Repo.Branch, ws.Plan.Head, ws.Plan.Base, ws.Plan.NewBranch

	ac, err := d.agent(ctx, vm)
	if err != nil {
		return nil, err
	}
	streams := agentclient.WorkspaceStreams{
		Bundle: func(w io.Writer) error {
			f, err := os.OpenFile(bundleFile, os.O_WRONLY|os.O_TRUNC, 0)
			if err != nil {
				return err
			}
			err = ws.WriteBundle(ctx, io.MultiWriter(w, f))
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if st, err := os.Stat(bundleFile); err == nil {
				info.BundleBytes = st.Size()
			}
			return err
		},
		PackIndex: func(w io.Writer) error {
			f, err := os.Open(bundleFile)
			if err != nil {
				return err
			}
			defer f.Close()
			return ws.WritePackIndex(ctx, f, w)
		},
		// After the overlay: see Workspace.WriteEntries.
		Entries: func(w io.Writer) error { return ws.WriteEntries(ctx, w) },
		Overlay: func(w io.Writer) error {
			var st workspace.OverlayStats
			var err error
			if ws.Plan.Mode == workspace.ModeFullCopy {
				st, err = workspace.WriteFullCopy(ctx, ws.Repo, w)
			} else {
				st, err = ws.WriteOverlay(ctx, w)
			}
			info.Files, info.Bytes = st.Files, st.Bytes
			for _, s := range st.Skipped {
				info.Skipped = append(info.Skipped, s.Path+": "+s.Reason)
			}
			return err
		},
	}
	res, err := d.guestStages(ctx, stage, func(onStage func(string)) (workspace.ApplyResult, error) {
		return ac.PrepareWorkspace(ctx, workspace.ApplyRequest{Dir: workspace.GuestDir, Force: req.Force, Plan: ws.Plan}, streams, onStage)
	})
	if err != nil {
		// The guest's own words (and hint), not "agent answered 409".
		var se *agentclient.StatusError
		if errors.As(err, &se) {
			return nil, se.Err
		}
		return nil, err
	}
	info.GuestHead = res.Head
	raw, err := json.Marshal(info)
	if err != nil {
		return nil, err
	}
	if err := d.store.SetVMWorkspace(ctx, vm.ID, string(raw)); err != nil {
		return nil, fmt.Errorf("record workspace: %w", err)
	}
	d.log.Info("workspace prepared", "vm", vm.Name, "source", info.Source, "head", info.Head,
		"files", info.Files, "bytes", info.Bytes, "bundle_bytes", info.BundleBytes, "replaced", res.Replaced)
	return info, nil
}

// guestStages runs call, which reports the guest's stages through
// onStage, and shows each reported stage as an operation stage that
// lasts until the next one (or the end) arrives.
func (d *Daemon) guestStages(ctx context.Context, stage stageFunc, call func(onStage func(string)) (workspace.ApplyResult, error)) (workspace.ApplyResult, error) {
	type outcome struct {
		res workspace.ApplyResult
		err error
	}
	stages := make(chan string, 16)
	done := make(chan outcome, 1)
	go func() {
		res, err := call(func(s string) { stages <- s })
		done <- outcome{res, err}
	}()
	var final *outcome
	next := ""
	select {
	case next = <-stages:
	case o := <-done:
		final = &o
	}
	for final == nil {
		name := next
		err := stage(name, func(ctx context.Context) error {
			select {
			case next = <-stages:
				return nil
			case o := <-done:
				// Stages reported just before the end still count.
				final = &o
				return o.err
			}
		})
		if err != nil {
			break
		}
	}
	return final.res, final.err
}

// workspaceOf decodes the VM's recorded workspace; nil when none.
func workspaceOf(vm store.VM) *api.Workspace {
	if vm.WorkspaceJSON == "" {
		return nil
	}
	var w api.Workspace
	if json.Unmarshal([]byte(vm.WorkspaceJSON), &w) != nil {
		return nil
	}
	return &w
}

// PullWorkspace fetches the guest workspace's branches and tags into the
// host repository under refs/remotes/banger/VM/ (tags under
// refs/banger/VM/tags/), leaving the host's branches, index and working
// tree alone.
func (d *Daemon) PullWorkspace(ctx context.Context, name string, req api.PullRequest) (api.PullResult, error) {
	if _, err := d.useVM(ctx, name); err != nil {
		return api.PullResult{}, err
	}
	vm, err := d.runningVM(ctx, name, "pull a workspace")
	if err != nil {
		return api.PullResult{}, err
	}
	info := workspaceOf(vm)
	if info == nil {
		return api.PullResult{}, api.Errorf(api.CodeNotFound,
			fmt.Sprintf("prepare one first: `banger vm workspace prepare %s`", vm.Name), "VM %q has no workspace", vm.Name)
	}
	path := req.Path
	if path == "" {
		path = info.Source
	}
	if !filepath.IsAbs(path) {
		return api.PullResult{}, api.Errorf(api.CodeInvalid, "pass an absolute path", "pull path %q is not absolute", path)
	}
	repo, err := workspace.Resolve(ctx, d.runner, path)
	if err != nil {
		return api.PullResult{}, err
	}
	have := append([]string(nil), info.Tips...)
	have = append(have, d.bangerRefObjects(ctx, repo, vm.Name)...)
	ac, err := d.agent(ctx, vm)
	if err != nil {
		return api.PullResult{}, err
	}
	file, refs, n, err := d.receivePull(ctx, ac, workspace.ExportRequest{Dir: info.Dir, Have: have})
	if err != nil {
		return api.PullResult{}, err
	}
	defer os.Remove(file)
	bundle := ""
	if n > 0 {
		bundle = file
	}
	res, err := workspace.ImportPull(ctx, d.runner, repo, vm.Name, refs, bundle)
	res.BundleBytes = n
	if err != nil {
		return res, err
	}
	d.log.Info("workspace pulled", "vm", vm.Name, "repo", repo.Root, "updated", len(res.Updated), "bundle_bytes", n)
	return res, nil
}

// bangerRefObjects lists what earlier pulls of this VM stored, so the
// guest leaves those commits out of the next bundle too.
func (d *Daemon) bangerRefObjects(ctx context.Context, repo workspace.Repo, vm string) []string {
	branches, tags := workspace.HostRefPrefixes(vm)
	out, err := d.runner.Run(ctx, "git", "-C", repo.Root, "for-each-ref", "--format=%(objectname)", branches, tags)
	if err != nil {
		return nil
	}
	return strings.Fields(string(out))
}

// receivePull has the guest export its workspace into a bundle file in
// the cache directory. The guest decides how much it sends, so the
// bundle is capped by limits.guest_stream_mib and stops before the disk
// runs low; either way the partial file is removed. The caller removes
// the file on success.
func (d *Daemon) receivePull(ctx context.Context, ac *agentclient.Client, req workspace.ExportRequest) (string, []workspace.Ref, int64, error) {
	const what = "workspace pull"
	dir := d.layout.CacheDir
	if err := d.checkFree(what, dir, 0); err != nil {
		return "", nil, 0, err
	}
	f, err := os.CreateTemp(dir, "pull-*.bundle")
	if err != nil {
		return "", nil, 0, fmt.Errorf("create bundle file: %w", err)
	}
	refs, n, err := ac.ExportWorkspace(ctx, req, d.guestStreamWriter(f, what, "the bundle from the guest", dir))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", nil, 0, streamLimitError(err)
	}
	return f.Name(), refs, n, nil
}

// guestStreamWriter bounds a stream a guest sends into a file in dir:
// at most limits.guest_stream_mib, and never into the last
// limits.min_free_mib of the disk.
func (d *Daemon) guestStreamWriter(w io.Writer, op, stream, dir string) io.Writer {
	return &system.LimitedWriter{W: w, Max: d.guestStreamMax(), What: stream + " (limits.guest_stream_mib)", Guard: d.spaceGuard(op, dir)}
}

func (d *Daemon) guestStreamMax() int64 {
	if n := d.cfg.Limits.GuestStreamMiB; n > 0 {
		return int64(n) << 20
	}
	return 4 << 30
}

func (d *Daemon) spaceGuard(op, dir string) *system.SpaceGuard {
	return &system.SpaceGuard{Statfs: d.statfs, What: op, Dir: dir, MinFree: uint64(max(d.cfg.Limits.MinFreeMiB, 0)) << 20}
}

// streamLimitError gives a size or space refusal its API code and a
// hint; other errors pass through.
func streamLimitError(err error) error {
	switch {
	case errors.Is(err, system.ErrTooLarge):
		return &hintedError{err: err, code: api.CodeInvalid, hint: "raise limits.guest_stream_mib in the daemon's config if this much is expected"}
	case errors.Is(err, system.ErrNoSpace):
		return &hintedError{err: err, code: api.CodeUnavailable, hint: "free some space (`banger image list`, `banger vm list`) or lower limits.min_free_mib"}
	}
	return err
}

// hintedError is err as an *api.Error (code and hint) for the HTTP layer,
// while errors.Is still sees what it wraps.
type hintedError struct {
	err        error
	code, hint string
}

func (e *hintedError) Error() string { return e.err.Error() }
func (e *hintedError) Unwrap() error { return e.err }
func (e *hintedError) As(target any) bool {
	if p, ok := target.(**api.Error); ok {
		*p = &api.Error{Code: e.code, Hint: e.hint, Message: e.err.Error()}
		return true
	}
	return false
}

// checkFree refuses an operation that will write about need bytes into
// dir when the disk lacks need plus limits.min_free_mib.
func (d *Daemon) checkFree(op, dir string, need uint64) error {
	reserve := uint64(max(d.cfg.Limits.MinFreeMiB, 0)) << 20
	return streamLimitError(system.CheckFree(d.statfs, op, dir, need+reserve))
}
